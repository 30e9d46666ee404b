"""CURE (Moosavi-Dezfooli et al. 2019): robustness through lower curvature of the loss in the input."""
from typing import Dict

import torch

from ..core.input_grad import loss_and_input_gradient
from ..models.modes import eval_mode
from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['CURETask', 'CURE_NORMS']

#: How the gradient difference is measured: the paper's squared L2 norm, or the plain L2 norm of the
#: authors' public code (F-Salehi/CURE_robustness).
CURE_NORMS = ('squared', 'plain')

_GROUP = 'CURE (--gradreg cure)'
_OPTIONS = [
    Option('--cure-weight', 'weight', number(0), help='γ of the curvature term (paper: 4)', metavar='W', group=_GROUP),
    Option('--cure-h', 'h', number(0, low_open=True),
           help='finite-difference step: L2 length of z in the units of the model input, the normalized tensors, as '
                "the authors' code (paper: 1.5; with CIFAR's std 0.2 about 0.30 in [0, 1] pixels)", metavar='H',
           group=_GROUP),
    Option('--cure-norm', 'norm', choices=CURE_NORMS,
           help="the gradient difference's squared L2 norm (the paper's formula) or plain L2 norm (the authors' "
                'code)', group=_GROUP),
]


@register_task('cure', options=_OPTIONS, double_backprop=True)
class CURETask(GradRegTask):
    """CE + γ·mean_b ‖∇ₓℓ(x_b + z_b) − ∇ₓℓ(x_b)‖₂² (or ‖·‖₂), z = h·sign(∇ₓℓ(x)) / ‖sign(∇ₓℓ(x))‖₂.

    The gradient difference along z is the Hessian-vector product H·z to first order, so the term
    penalizes the curvature of the loss in the direction an L∞ attack moves first. As the authors'
    code: the input is the model's own (normalized) input, so h and the gradients are in its units
    (in pixels h is about h·std); x + z is not clipped; z is a constant (not differentiated); the CE term
    runs in the model's mode and the regularizer's passes with the model in eval mode (BatchNorm on its
    running statistics), after the CE pass. Gradients are per sample, differentiated through (double
    backprop).

    Args:
        model, criterion: As for timm's ClassificationTask.
        weight: γ (paper: 4). h: Step length in normalized units (paper: 1.5, the end of its schedule).
        norm: 'squared' (the paper's ‖·‖₂²) or 'plain' (the public code's ‖·‖₂).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """


    def __init__(self, model, criterion=None, *, weight: float = 4.0, h: float = 1.5, norm: str = 'squared',
                 **kwargs):
        super().__init__(model, criterion, **kwargs)
        if weight < 0 or h <= 0:
            raise ValueError(f'need weight >= 0 and h > 0, got {weight}, {h}')
        if norm not in CURE_NORMS:
            raise ValueError(f"unknown CURE norm {norm!r}; valid: {', '.join(CURE_NORMS)}")
        self.weight, self.h, self.norm = float(weight), float(h), norm

    def _input_gradient(self, x: torch.Tensor, target: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """Per-sample ∇ of the loss w.r.t. the model's (normalized) input."""
        return loss_and_input_gradient(self.trainable_module, x, target, self.criterion, create_graph=create_graph,
                                       grad_scaler=self.grad_scaler)[2]

    def curvature(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mean_b of the norm of ∇ₓℓ(x_b + z_b) − ∇ₓℓ(x_b), the model in eval mode."""
        x = input.detach()
        with eval_mode(self.trainable_module):
            sign = self._input_gradient(x, target, create_graph=False).sign()
            z = self.h * (sign + 1e-7) / (sign.flatten(1).norm(dim=1) + 1e-7).view(-1, *[1] * (sign.ndim - 1))
            difference = (self._input_gradient(x + z, target, create_graph=True)
                          - self._input_gradient(x, target, create_graph=True))
        squared = difference.flatten(1).square().sum(1)
        return (squared if self.norm == 'squared' else squared.sqrt()).mean()

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        ce = self.criterion(output, target)
        curvature = self.curvature(input, target)
        return {'loss': ce + self.weight * curvature, 'output': output, 'ce': ce.detach(),
                'penalty': curvature.detach(), 'weight': torch.tensor(self.weight, device=ce.device)}

    def extra_repr(self) -> str:
        return f'weight={self.weight}, h={self.h}, norm={self.norm!r}, ' + super().extra_repr()
