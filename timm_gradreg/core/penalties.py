"""GradNorm: the L1 norm of the loss-input gradient as a penalty (paper Eq. 2).

    L = λ_CE · CE + λ_GN · (ε/σ) · mean_b ||g_b||_1,   g_b = ∇_{x_b} CE(f(x_b), y_b)

With g taken w.r.t. the *normalized* input, ε·||∇_pixel||_1 = Σ_c (ε/σ_c)||g_c||_1 is
exactly the first-order loss increase under the worst L∞ perturbation of radius ε in
pixel space (the first-order model of FGSM). ``sigma='channel'`` uses the data
config's per-channel std (exact); a float uses one scalar (the paper: 0.225).
"""
from typing import Optional, Sequence, Tuple, Union

import torch

from .normalization import PixelSpace

__all__ = ['Sigma', 'resolve_sigma', 'gradnorm_penalty', 'per_sample_gradnorm', 'penalty_direction']

Sigma = Union[float, str, Sequence[float]]


def resolve_sigma(sigma: Sigma, space: PixelSpace) -> Union[float, Tuple[float, ...]]:
    """``'channel'`` -> the data std per channel; a number -> that scalar; a sequence -> per channel."""
    if isinstance(sigma, str):
        if sigma == 'channel':
            return space.std
        try:
            sigma = float(sigma)
        except ValueError:
            raise ValueError(f"sigma must be 'channel' or a positive number, got {sigma!r}") from None
    if isinstance(sigma, (int, float)):
        if sigma <= 0:
            raise ValueError(f'sigma must be > 0, got {sigma}')
        return float(sigma)
    values = tuple(float(s) for s in sigma)
    if not values or any(s <= 0 for s in values):
        raise ValueError(f'per-channel sigma must be positive values, got {values}')
    return values


def _channel_scale(grad: torch.Tensor, eps: float, sigma: Union[float, Sequence[float]],
                   channel_weights: Optional[Sequence[float]] = None) -> Union[float, torch.Tensor]:
    """ε/σ (a scalar) or ε·w_c/σ_c shaped to broadcast over [B, C, H, W]."""
    if isinstance(sigma, (int, float)) and channel_weights is None:
        return eps / sigma
    scale = eps / torch.as_tensor(sigma, device=grad.device, dtype=grad.dtype).reshape(-1)
    if channel_weights is not None:
        scale = scale * torch.as_tensor(channel_weights, device=grad.device, dtype=grad.dtype)
    if scale.numel() not in (1, grad.shape[1]):
        raise ValueError(f'sigma / channel weights have {scale.numel()} values but the gradient has {grad.shape[1]} '
                         'channels')
    return scale.view(1, -1, *([1] * (grad.ndim - 2)))


def per_sample_gradnorm(grad: torch.Tensor, eps: float, sigma: Union[float, Sequence[float]],
                        channel_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """(ε/σ)·||g_b||_1 for each sample b (L1 summed over C, H, W); shape [B].

    ``channel_weights`` w_c weigh each channel's L1 norm (the official ``DBPChannel``: 1, 2, 1).
    """
    scale = _channel_scale(grad, eps, sigma, channel_weights)
    if isinstance(scale, float):
        return grad.abs().flatten(1).sum(1) * scale
    return (grad.abs() * scale).flatten(1).sum(1)


def gradnorm_penalty(grad: torch.Tensor, eps: float, sigma: Union[float, Sequence[float]], threshold: float = 0.0,
                     channel_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """The GradNorm penalty of Eq. 2 (before λ_GN): mean_b (ε/σ)·||g_b||_1.

    With ``threshold`` t > 0 the hinge mean_b max(0, (ε/σ)·||g_b||_1 − t) (the official
    ``DBPThresholded``): samples whose first-order loss increase is already below t cost nothing.
    """
    norms = per_sample_gradnorm(grad, eps, sigma, channel_weights)
    return torch.relu(norms - threshold).mean() if threshold > 0 else norms.mean()


def penalty_direction(grad: torch.Tensor, eps: float, sigma: Union[float, Sequence[float]], threshold: float = 0.0,
                      channel_weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """v with ∂penalty/∂g_b = v_b / B: (ε/σ)⊙w⊙sign(g), zero for samples below the hinge threshold.

    It is the worst-case L∞ step of radius ε in pixel space (FGSM), and, since
    ∇θ[(ε/σ)||g||₁] = H_θx·v, the direction of the finite-difference GradNorm gradient
    ∇θ[L(x + h·v) − L(x)] / h.
    """
    direction = grad.sign() * _channel_scale(grad, eps, sigma, channel_weights)
    if threshold > 0:
        active = per_sample_gradnorm(grad, eps, sigma, channel_weights) > threshold
        direction = direction * active.view(-1, *([1] * (grad.ndim - 1))).to(direction.dtype)
    return direction
