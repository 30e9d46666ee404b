"""Input gradient regularization (Ross & Doshi-Velez 2018): double backprop on the squared L2 norm."""
from typing import Dict

import torch

from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['InputGradientTask']

_OPTIONS = [Option('--igr-weight', 'weight', number(0),
                   help="λ in the authors' units (their l2dbl): λ·½‖∇ₓ of the batch-mean CE‖², which is "
                        'λ/(2B)·mean_b ‖∇ₓCE_b‖² (their MNIST pick 10^4.75, SVHN 10^4, at batch 256; default 10^4)',
                   metavar='W', group='Input gradient regularization (--gradreg igr)')]


@register_task('igr', options=_OPTIONS, double_backprop=True)
class InputGradientTask(GradRegTask):
    """CE + λ·½‖∇ₓ CE‖₂², CE the batch mean and the gradient w.r.t. [0, 1] pixels, by double backprop.

    The authors' double-backprop loss (dtak/adversarial-robustness-public: ``l2_double_backprop`` =
    ``tf.nn.l2_loss`` of the gradient of the batch-mean cross-entropy, weighted by ``l2dbl``), so a λ from
    their paper means the same here at the same batch size. −log p(y|x) is the cross-entropy: per sample the
    penalty is the squared L2 norm of GradNorm's gradient, the L2, squared counterpart of GradNorm's L1.

    Args:
        model, criterion: As for timm's ClassificationTask (hard-label cross-entropy is the paper's).
        weight: λ, the authors' l2dbl (they select it per dataset: MNIST 10^4.75, SVHN 10^4 at batch 256).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """


    def __init__(self, model, criterion=None, *, weight: float = 1e4, **kwargs):
        super().__init__(model, criterion, **kwargs)
        if weight < 0:
            raise ValueError(f'weight must be >= 0, got {weight}')
        self.weight = float(weight)

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        output, ce, grad = self.pixel_loss_gradient(input, target)
        penalty = 0.5 * (grad / grad.shape[0]).square().sum()  # ½‖∇ₓ of the batch mean‖²
        return {'loss': ce + self.weight * penalty, 'output': output, 'ce': ce.detach(), 'penalty': penalty.detach(),
                'weight': torch.tensor(self.weight, device=ce.device)}

    def extra_repr(self) -> str:
        return f'weight={self.weight}, ' + super().extra_repr()
