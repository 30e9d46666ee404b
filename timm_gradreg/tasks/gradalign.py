"""GradAlign (Andriushchenko & Flammarion 2020): FGSM training kept honest by aligned input gradients."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..attacks import fgsm_attack
from ..schedules import LinearWarmup
from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['GradAlignTask']

_GROUP = 'GradAlign (--gradreg gradalign)'
_OPTIONS = [
    Option('--gradalign-weight', 'weight', number(0), help='λ of the alignment term (paper: 0.2 at ε 8/255)',
           metavar='W', group=_GROUP),
    Option('--gradalign-eps', 'eps', number(0), help='L∞ radius in pixels of FGSM and of η (default: 4/255)',
           metavar='EPS', group=_GROUP),
    Option('--gradalign-step-size', 'step_size', number(0), help='FGSM-RS step in pixels (default: 1.25·ε)',
           metavar='STEP', group=_GROUP),
    Option('--gradalign-warmup-epochs', 'warmup_epochs', number(0), 0.0,
           'epochs over which the FGSM step rises linearly from 0 at epoch boundaries, as --attack-warmup-epochs '
           '(default: 0, the paper)', metavar='N', group=_GROUP),
]


@register_task('gradalign', options=_OPTIONS)
class GradAlignTask(GradRegTask):
    """CE(f(x_FGSM-RS), y) + λ·mean_b (1 − cos(∇ₓℓ(x_b), ∇ₓℓ(x_b + η_b))), η ~ U(−ε, ε)^d.

    FGSM-RS (random start, step 1.25·ε, model in eval mode) supplies the adversarial term; the
    alignment of the loss-input gradients at x and at a random point of the ε-ball keeps the
    loss locally linear, which is what single-step training loses in catastrophic overfitting.
    Both gradients are per sample, w.r.t. [0, 1] pixels, and differentiated through (double backprop).
    ``warmup_epochs`` warms the FGSM step up as the pgd/fgsm tasks do (the paper has none): at a
    large ε a full FGSM step from the first iteration can hold a fresh network at the constant
    predictor.

    Args:
        model, criterion: As for timm's ClassificationTask.
        weight: λ (paper: 0.2 for ε 8/255 on CIFAR-10).
        eps: Radius in pixels (4/255). step_size: FGSM step (1.25·ε).
        warmup_epochs: The FGSM step rises linearly from 0 over these epochs, at epoch boundaries (0: off).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    double_backprop = True

    def __init__(self, model, criterion=None, *, weight: float = 0.2, eps: float = 4 / 255,
                 step_size: Optional[float] = None, warmup_epochs: float = 0.0, **kwargs):
        super().__init__(model, criterion, **kwargs)
        if weight < 0 or eps < 0:
            raise ValueError(f'need weight >= 0 and eps >= 0, got {weight}, {eps}')
        self.weight, self.eps = float(weight), float(eps)
        self.step_size = float(step_size) if step_size is not None else 1.25 * self.eps
        self.warmup = LinearWarmup(warmup_epochs, per='epoch')
        self.uses_schedule = self.warmup.epochs > 0

    def alignment(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mean_b (1 − cos(∇ₓℓ(x_b), ∇ₓℓ(x_b + η_b))), differentiable in the parameters."""
        pixels = self.space.to_pixel(input.detach())
        eta = torch.empty_like(pixels).uniform_(-self.eps, self.eps)
        noisy = self.space.to_normalized((pixels + eta).clamp(0.0, 1.0))
        _, _, grads = self.pixel_loss_gradient(torch.cat([input, noisy]), torch.cat([target, target]))
        clean, shifted = grads.flatten(1).chunk(2)
        return (1.0 - F.cosine_similarity(clean, shifted, dim=1, eps=1e-12)).mean()

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        adv = fgsm_attack(self.attack_model(), input, target, eps=self.eps,
                          step_size=self.step_size * self.warmup(self.epoch), space=self.space, random_start=True)
        output = self.trainable_module(adv)
        ce = self.criterion(output, target)
        align = self.alignment(input, target)
        return {'loss': ce + self.weight * align, 'output': output, 'ce': ce.detach(), 'penalty': align.detach(),
                'weight': torch.tensor(self.weight, device=ce.device)}

    def extra_repr(self) -> str:
        return (f'weight={self.weight}, eps={self.eps:.5f}, step_size={self.step_size:.5f}, warmup={self.warmup}, '
                + super().extra_repr())
