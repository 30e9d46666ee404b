"""CURE (Moosavi-Dezfooli et al. 2019): robustness through lower curvature of the loss in the input."""
from typing import Dict

import torch

from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['CURETask']

_GROUP = 'CURE (--gradreg cure)'
_OPTIONS = [
    Option('--cure-weight', 'weight', number(0), help='γ of the curvature term (paper: 4)', metavar='W', group=_GROUP),
    Option('--cure-h', 'h', number(0, low_open=True),
           help='finite-difference step: L2 length in [0, 1] pixels along sign(∇ₓℓ) (paper: 1.5)', metavar='H',
           group=_GROUP),
]


@register_task('cure', options=_OPTIONS)
class CURETask(GradRegTask):
    """CE + γ·mean_b ‖∇ₓℓ(x_b + h·z_b) − ∇ₓℓ(x_b)‖₂², z = sign(∇ₓℓ(x)) / ‖sign(∇ₓℓ(x))‖₂.

    The gradient difference along z is h times the Hessian-vector product H·z, so the term
    penalizes the curvature of the loss in the direction an L∞ attack moves first. z is a fixed
    direction (not differentiated); both gradients are per sample, w.r.t. [0, 1] pixels, and
    differentiated through (double backprop). With z of unit L2 length, h = 1.5 is about the L2
    size of an 8/255 L∞ step on a 32×32 colour image (8/255·√3072 ≈ 1.74).

    Args:
        model, criterion: As for timm's ClassificationTask.
        weight: γ (paper: 4). h: Step length (paper: 1.5, reached at the end of its schedule).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    double_backprop = True

    def __init__(self, model, criterion=None, *, weight: float = 4.0, h: float = 1.5, **kwargs):
        super().__init__(model, criterion, **kwargs)
        if weight < 0 or h <= 0:
            raise ValueError(f'need weight >= 0 and h > 0, got {weight}, {h}')
        self.weight, self.h = float(weight), float(h)

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output, ce, grad = self.pixel_loss_gradient(input, target)
        z = grad.detach().sign()
        z = z / z.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (z.ndim - 1))
        shifted = self.space.to_normalized((self.space.to_pixel(input.detach()) + self.h * z).clamp(0.0, 1.0))
        _, _, grad_shifted = self.pixel_loss_gradient(shifted, target)
        curvature = (grad_shifted - grad).flatten(1).square().sum(1).mean()
        return {'loss': ce + self.weight * curvature, 'output': output, 'ce': ce.detach(),
                'penalty': curvature.detach(), 'weight': torch.tensor(self.weight, device=ce.device)}

    def extra_repr(self) -> str:
        return f'weight={self.weight}, h={self.h}, ' + super().extra_repr()
