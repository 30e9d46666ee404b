"""Input gradients of a pixel-space model and their statistics (paper Table 1, Fig. 6/7).

All quantities are w.r.t. [0, 1] pixels with normalization inside the model, per sample.
"""
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['per_sample_ce', 'loss_input_gradient', 'class_logit_gradient', 'saliency_map', 'gradient_norm_table',
           'stats']


def per_sample_ce(model: nn.Module, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> CE(f(x), y) per sample, the loss every analysis differentiates."""
    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, reduction='none')
    return loss_fn


def loss_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
    """(g = ∇ₓ CE per sample, loss per sample, predicted class)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction='none')
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return grad.detach(), loss.detach(), logits.detach().argmax(-1)


def class_logit_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ f(x)_y per sample (the class gradient behind saliency maps)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)
    return grad.detach()


def saliency_map(grad: torch.Tensor) -> torch.Tensor:
    """max over channels of |grad|: [B, H, W]."""
    return grad.abs().amax(1)


def stats(values: torch.Tensor) -> Dict[str, float]:
    values = values.double()
    if values.numel() == 0:
        return {'n': 0, 'mean': float('nan'), 'std': float('nan'), 'median': float('nan')}
    return {'n': int(values.numel()), 'mean': values.mean().item(),
            'std': values.std().item() if values.numel() > 1 else 0.0, 'median': values.median().item()}


def gradient_norm_table(l1: torch.Tensor, attack_fails: torch.Tensor, correct: torch.Tensor) -> Dict[str, Dict]:
    """Table 1: E||g||₁ overall and conditioned on PGD failing / succeeding (and on clean correctness)."""
    return {'all': stats(l1), 'pgd_fails': stats(l1[attack_fails]), 'pgd_succeeds': stats(l1[~attack_fails]),
            'correct': stats(l1[correct]), 'incorrect': stats(l1[~correct])}
