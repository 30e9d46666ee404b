"""GradNorm: the L1 norm of the loss-input gradient as a penalty (paper Eq. 2).

    L = λ_CE · CE + λ_GN · (ε/σ) · mean_b ||g_b||_1,   g_b = ∇_{x_b} CE(f(x_b), y_b)

With g taken w.r.t. the *normalized* input, ε·||∇_pixel||_1 = Σ_c (ε/σ_c)||g_c||_1 is
exactly the first-order loss increase under the worst L∞ perturbation of radius ε in
pixel space (the first-order model of FGSM). ``sigma='channel'`` uses the data
config's per-channel std (exact); a float uses one scalar (the paper: 0.225).
"""
from typing import Sequence, Tuple, Union

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


def per_sample_gradnorm(grad: torch.Tensor, eps: float, sigma: Union[float, Sequence[float]]) -> torch.Tensor:
    """(ε/σ)·||g_b||_1 for each sample b (L1 summed over C, H, W); shape [B]."""
    if isinstance(sigma, (int, float)):
        return grad.abs().flatten(1).sum(1) * (eps / sigma)
    weight = eps / torch.tensor(sigma, device=grad.device, dtype=grad.dtype)
    if weight.numel() not in (1, grad.shape[1]):
        raise ValueError(f'sigma has {weight.numel()} values but the gradient has {grad.shape[1]} channels')
    weight = weight.view(1, -1, *([1] * (grad.ndim - 2)))
    return (grad.abs() * weight).flatten(1).sum(1)


def gradnorm_penalty(grad: torch.Tensor, eps: float, sigma: Union[float, Sequence[float]]) -> torch.Tensor:
    """(ε/σ)·mean_b ||g_b||_1: the GradNorm penalty of Eq. 2 (before λ_GN)."""
    return per_sample_gradnorm(grad, eps, sigma).mean()


def penalty_direction(grad: torch.Tensor, eps: float, sigma: Union[float, Sequence[float]]) -> torch.Tensor:
    """v = (ε/σ)⊙sign(g): the normalized-space direction with g·v = (ε/σ)·||g||₁ per sample.

    It is the worst-case L∞ step of radius ε in pixel space (FGSM), and, since
    ∇θ[(ε/σ)||g||₁] = H_θx·v, the direction of the finite-difference GradNorm gradient
    ∇θ[L(x + h·v) − L(x)] / h.
    """
    if isinstance(sigma, (int, float)):
        return grad.sign() * (eps / sigma)
    weight = eps / torch.tensor(sigma, device=grad.device, dtype=grad.dtype)
    return grad.sign() * weight.view(1, -1, *([1] * (grad.ndim - 2)))
