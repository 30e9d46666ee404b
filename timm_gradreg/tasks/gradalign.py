"""GradAlign (Andriushchenko & Flammarion 2020): FGSM training kept honest by aligned input gradients."""
from typing import Dict, Optional

import torch

from ..core.budget import check_attack_budget
from ..core.schedules import LinearWarmup
from ._registry import register_task
from .base import GradRegTask
from .options import Option, attack_radius, number

__all__ = ['GradAlignTask', 'gradalign_weight']

_GROUP = 'GradAlign (--gradreg gradalign)'


def gradalign_weight(eps: float) -> float:
    """The authors' λ for a radius ε in [0, 1] pixels: log-linear in ε, 0.02·10^(ε·255/8) (their script
    sh/exps_diff_eps_cifar10.sh; 0.2 at 8/255, 2.0 at 16/255)."""
    return 0.02 * 10 ** (eps * 255 / 8)


_OPTIONS = [
    Option('--gradalign-weight', 'weight', number(0),
           help="λ of the alignment term (default: the authors' λ(ε) = 0.02·10^(ε·255/8), 0.2 at 8/255)",
           metavar='W', group=_GROUP),
    Option('--gradalign-eps', 'eps', attack_radius, help='L∞ radius in pixels of FGSM and of η',
           metavar='EPS', group=_GROUP),
    Option('--gradalign-step-size', 'step_size', attack_radius,
           help="FGSM step in pixels (default: the authors' 1.25·ε, clipped to the ε-ball)", metavar='STEP',
           group=_GROUP),
    Option('--gradalign-random-start', 'random_start', bool, False,
           "start FGSM from a uniform point of the ε-ball (FGSM-RS); the authors' GradAlign runs start at x",
           group=_GROUP),
    Option('--gradalign-warmup-epochs', 'warmup_epochs', number(0), 0.0,
           'epochs over which the FGSM step rises linearly from 0 at epoch boundaries, as --attack-warmup-epochs; '
           'the authors do not warm it up', metavar='N', group=_GROUP),
]


@register_task('gradalign', options=_OPTIONS, double_backprop=True)
class GradAlignTask(GradRegTask):
    """CE(f(x + δ_FGSM), y) + λ·(1 − mean_b cos(∇ₓℓ(x_b), ∇ₓℓ(x_b + η_b))), η ~ U(−ε, ε)^d.

    As the authors' train.py: FGSM takes one signed step of 1.25·ε from x (``attack_init zero``; a uniform
    start with ``random_start``), clipped to the ε-ball and [0, 1]; its input gradient doubles as the
    first gradient of the alignment term, a constant (not differentiated). Only the gradient at the random
    point x + η (not clipped) is differentiated (double backprop). Samples with a zero gradient are left out
    of the mean cosine. Every pass runs in the model's own mode (train mode: BatchNorm on batch statistics).
    Gradients are per sample, w.r.t. [0, 1] pixels.

    Args:
        model, criterion: As for timm's ClassificationTask.
        weight: λ; None: the authors' ``gradalign_weight(eps)``.
        eps: Radius in pixels (4/255). step_size: FGSM step (1.25·ε).
        random_start: FGSM from a uniform start (off: the authors' GradAlign runs).
        warmup_epochs: The FGSM step rises linearly from 0 over these epochs, at epoch boundaries (0: off).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """


    def __init__(self, model, criterion=None, *, weight: Optional[float] = None, eps: float = 4 / 255,
                 step_size: Optional[float] = None, random_start: bool = False, warmup_epochs: float = 0.0,
                 **kwargs):
        super().__init__(model, criterion, **kwargs)
        if weight is not None and weight < 0:
            raise ValueError(f'need weight >= 0, got {weight}')
        check_attack_budget(eps=eps, step_size=step_size)
        self.eps = float(eps)
        self.weight = gradalign_weight(self.eps) if weight is None else float(weight)
        self.step_size = float(step_size) if step_size is not None else 1.25 * self.eps
        self.random_start = bool(random_start)
        self.warmup = LinearWarmup(warmup_epochs, per='epoch')
        self.uses_schedule = self.warmup.epochs > 0

    def _pixel_gradient(self, pixels: torch.Tensor, target: torch.Tensor, create_graph: bool,
                        module=None) -> torch.Tensor:
        return self.pixel_loss_gradient(self.space.to_normalized(pixels), target, create_graph=create_graph,
                                        module=module)[2]

    def alignment(self, grad: torch.Tensor, grad_noisy: torch.Tensor) -> torch.Tensor:
        """1 − mean cos over the samples whose two gradients are both non-zero (0 if there is none)."""
        first, second = grad.flatten(1), grad_noisy.flatten(1)
        first_norm, second_norm = first.norm(dim=1), second.norm(dim=1)
        keep = (first_norm != 0) & (second_norm != 0)
        if not keep.any():
            return second.sum() * 0.0
        cos = ((first[keep] / first_norm[keep, None]) * (second[keep] / second_norm[keep, None])).sum(1)
        return 1.0 - cos.mean()

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        pixels = self.space.to_pixel(input.detach())
        delta = torch.zeros_like(pixels)
        if self.random_start:
            delta.uniform_(-self.eps, self.eps)
        start = pixels + delta
        grad = self._pixel_gradient(start.clamp(0.0, 1.0), target, False, self.attack_model()).detach()
        grad = grad * ((start >= 0) & (start <= 1))  # the clip to [0, 1] passes no gradient outside it
        step = self.step_size * self.warmup(self.epoch)
        delta = (delta + step * grad.sign()).clamp(-self.eps, self.eps)
        adv = (pixels + delta).clamp(0.0, 1.0)
        output = self.trainable_module(self.space.to_normalized(adv))
        ce = self.criterion(output, target)
        eta = torch.empty_like(pixels).uniform_(-self.eps, self.eps)
        align = self.alignment(grad, self._pixel_gradient(pixels + eta, target, True))
        return {'loss': ce + self.weight * align, 'output': output, 'ce': ce.detach(), 'penalty': align.detach(),
                'weight': torch.tensor(self.weight, device=ce.device)}

    def extra_repr(self) -> str:
        return (f'weight={self.weight}, eps={self.eps:.5f}, step_size={self.step_size:.5f}, '
                f'random_start={self.random_start}, warmup={self.warmup}, ' + super().extra_repr())
