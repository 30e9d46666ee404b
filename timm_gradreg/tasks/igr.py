"""Input gradient regularization (Ross & Doshi-Velez 2018): double backprop on the squared L2 norm."""
from typing import Dict

import torch

from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['InputGradientTask']

_OPTIONS = [Option('--igr-weight', 'weight', number(0),
                   help='λ of the squared input-gradient norm (the paper selects it per dataset; default 10)',
                   metavar='W', group='Input gradient regularization (--gradreg igr)')]


@register_task('igr', options=_OPTIONS)
class InputGradientTask(GradRegTask):
    """CE + λ·mean_b ‖∇ₓ log p(y_b | x_b)‖₂², the gradient w.r.t. [0, 1] pixels, by double backprop.

    −log p(y|x) is the cross-entropy, so the penalty is the squared L2 norm of GradNorm's gradient:
    the L2, squared counterpart of GradNorm's L1 (the dual norm of an L∞ attack).

    Args:
        model, criterion: As for timm's ClassificationTask (hard-label cross-entropy is the paper's).
        weight: λ (the paper tunes it per dataset; 10 here).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    double_backprop = True

    def __init__(self, model, criterion=None, *, weight: float = 10.0, **kwargs):
        super().__init__(model, criterion, **kwargs)
        if weight < 0:
            raise ValueError(f'weight must be >= 0, got {weight}')
        self.weight = float(weight)

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output, ce, grad = self.pixel_loss_gradient(input, target)
        penalty = grad.flatten(1).square().sum(1).mean()
        return {'loss': ce + self.weight * penalty, 'output': output, 'ce': ce.detach(), 'penalty': penalty.detach(),
                'weight': torch.tensor(self.weight, device=ce.device)}

    def extra_repr(self) -> str:
        return f'weight={self.weight}, ' + super().extra_repr()
