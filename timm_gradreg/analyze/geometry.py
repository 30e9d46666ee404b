"""Loss-landscape geometry around inputs (paper Tables 6-7, Fig. 11).

Everything is per sample: the loss is a sum of per-sample losses of a model in eval
mode, so Hessian-vector products of the batch loss are the per-sample HVPs.
"""
from typing import Callable, Dict, Optional, Sequence

import torch

from ..double_backward import double_backward_safe
from .gradients import stats

__all__ = ['hessian_vector_product', 'hessian_spectral_norm', 'curvature_table', 'local_linearity_error',
           'path_profile']

LossFn = Callable[[torch.Tensor], torch.Tensor]


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _per_sample(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (t.ndim - 1))


def hessian_vector_product(loss_fn: LossFn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample ∇²ₓ L · v by double backprop (``double_backward_safe``, so fused attention works too)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), double_backward_safe():
        (grad,) = torch.autograd.grad(loss_fn(x).sum(), x, create_graph=True)
        (hv,) = torch.autograd.grad((grad * v).sum(), x)
    return hv.detach()


def hessian_spectral_norm(loss_fn: LossFn, x: torch.Tensor, iters: int = 20,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """||∇²ₓ L||₂ per sample by power iteration on Hessian-vector products: [B]."""
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    v = v / _per_sample(_flat_norm(v), v)
    norm = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        hv = hessian_vector_product(loss_fn, x, v)
        norm = _flat_norm(hv)
        v = hv / _per_sample(norm.clamp_min(torch.finfo(x.dtype).tiny), hv)
    return norm


def curvature_table(grad: torch.Tensor, spectral_norm: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Table 6: ||g||₂, ||H||₂ and the normalized curvature ||H||₂/||g||₂."""
    g2 = _flat_norm(grad)
    return {'grad_l2': stats(g2), 'hessian_norm': stats(spectral_norm),
            'normalized_curvature': stats(spectral_norm / g2.clamp_min(torch.finfo(g2.dtype).tiny))}


@torch.no_grad()
def local_linearity_error(loss_fn: LossFn, x: torch.Tensor, eps: float, draws: int = 8,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """E|αL(x+η₁) + (1−α)L(x+η₂) − L(x+αη₁+(1−α)η₂)|², α~U(0,1), η~U(−ε,ε); per sample [B].

    Zero exactly when the loss is affine in the input around x.
    """
    errors = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(draws):
        eta1 = (torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1) * eps
        eta2 = (torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1) * eps
        alpha = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).to(x.device)
        a = _per_sample(alpha, x)
        mix = alpha * loss_fn(x + eta1) + (1 - alpha) * loss_fn(x + eta2)
        errors += (mix - loss_fn(x + a * eta1 + (1 - a) * eta2)).double().square()
    return errors / draws


def path_profile(loss_fn: LossFn, x: torch.Tensor, direction: torch.Tensor, ts: Sequence[float],
                 power_iters: int = 10, generator: Optional[torch.Generator] = None) -> Dict[str, list]:
    """Mean loss, ||g||₁ and normalized curvature at x + t·direction for each t (paper Fig. 11)."""
    out = {'t': list(ts), 'loss': [], 'grad_l1': [], 'curvature': []}
    for t in ts:
        xt = (x + t * direction).clamp(0, 1)
        xg = xt.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(xg)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        h = hessian_spectral_norm(loss_fn, xt, power_iters, generator)
        out['loss'].append(loss.mean().item())
        out['grad_l1'].append(grad.flatten(1).abs().sum(1).mean().item())
        out['curvature'].append((h / _flat_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)).mean().item())
    return out
