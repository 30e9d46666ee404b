"""Do input gradients look like edges? Per-image Pearson correlation of log maps (paper Table 5)."""
from typing import Dict

import torch

from ..core.edge_maps import EdgeEnergy
from .gradients import stats

__all__ = ['oriented_energy', 'log_correlation', 'edge_correlation_table']


def oriented_energy(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """|g_u*x|² + |g_v*x|² summed over channels, Gaussian-derivative filters: [B, H, W]."""
    return EdgeEnergy('gaussian', sigma)(images)[:, 0]


def log_correlation(maps: torch.Tensor, energy: torch.Tensor, clamp: float = 1e-3) -> torch.Tensor:
    """Per-image Pearson correlation of log(maps) with log(max(energy, clamp)); [B].

    ``maps`` are gradient magnitudes (floored at the smallest normal float so zeros stay
    finite); the energy is clamped at ``clamp`` so flat regions share one value.
    """
    tiny = torch.finfo(torch.float32).tiny
    a = maps.double().clamp_min(tiny).log().flatten(1)
    b = energy.double().clamp_min(clamp).log().flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denom = (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)
    return (a * b).sum(1) / denom


def edge_correlation_table(images: torch.Tensor, saliency: torch.Tensor, loss_grad_map: torch.Tensor,
                           sigma: float = 1.0) -> Dict[str, Dict[str, float]]:
    """Mean ± std over images of the correlation of log saliency and of log|g| with log oriented energy."""
    energy = oriented_energy(images, sigma)
    return {'saliency': stats(log_correlation(saliency, energy)),
            'loss_gradient': stats(log_correlation(loss_grad_map, energy))}
