"""N-FGSM (de Jorge et al., NeurIPS 2022): single-step adversarial training from strong noise, not clipped."""
from typing import Dict, Optional

import torch

from ..core.budget import check_attack_budget
from ._registry import register_task
from .base import GradRegTask
from .options import Option, attack_radius, number

__all__ = ['NFGSMTask']

_GROUP = 'N-FGSM (--gradreg nfgsm)'
_OPTIONS = [
    Option('--nfgsm-eps', 'eps', attack_radius, help='ε in pixels: the noise and the step are set from it',
           metavar='EPS', group=_GROUP),
    Option('--nfgsm-noise', 'noise', number(0), help='half-width of the uniform noise, in units of ε (k)',
           metavar='K', group=_GROUP),
    Option('--nfgsm-step-size', 'step_size', attack_radius, help='the signed step in pixels (default: ε)',
           metavar='STEP', group=_GROUP),
    Option('--nfgsm-clip', 'clip', number(0, low_open=True),
           help='radius of the L∞ ball the perturbation is clipped to, in units of ε (default: none, as N-FGSM)',
           metavar='C', group=_GROUP),
]


@register_task('nfgsm', options=_OPTIONS)
class NFGSMTask(GradRegTask):
    """CE(f(x + η + α·sign(∇ₓℓ(x + η))), y), η ~ U(−k·ε, k·ε)^d, the perturbation not clipped to the ε-ball.

    As the authors' train.py (pdejorge/N-FGSM): the noise, U(−k·ε, k·ε) per pixel (drawn in one call in the
    batch's order, where their loop draws a channel at a time: the same distribution, and gradient accumulation and
    DDP then draw what one batch would), clipped so x + η stays in [0, 1]; one signed step of α (ε by default) on the batch-mean CE at x + η; the
    result clipped to [0, 1] only (``clip`` None; a radius c·ε otherwise, c = 1 being FGSM-RS's ball); both
    passes run in the model's own mode (their model stays in train mode), the first on the model without DDP.
    Pixel units throughout.

    Args:
        model, criterion: As for timm's ClassificationTask.
        eps: ε in pixels (8/255: their CIFAR-10 runs).
        noise: k, the noise's half-width in units of ε (2).
        step_size: α in pixels; None: ε.
        clip: The perturbation's L∞ clipping radius in units of ε; None: no clipping.
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    def __init__(self, model, criterion=None, *, eps: float = 8 / 255, noise: float = 2.0,
                 step_size: Optional[float] = None, clip: Optional[float] = None, **kwargs):
        super().__init__(model, criterion, **kwargs)
        check_attack_budget(eps=eps, step_size=step_size)
        if noise < 0 or (clip is not None and clip <= 0):
            raise ValueError(f'need noise >= 0 and clip > 0 (or None), got {noise} and {clip}')
        self.eps, self.noise = float(eps), float(noise)
        self.step_size = self.eps if step_size is None else float(step_size)
        self.clip = None if clip is None else float(clip)

    def perturb(self, pixels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The N-FGSM perturbation of ``pixels`` (detached)."""
        eta = torch.zeros_like(pixels)
        if self.noise > 0:  # one draw in the batch's order: micro-batches and processes draw what one batch would
            eta.uniform_(-self.noise * self.eps, self.noise * self.eps)
            eta = torch.max(torch.min(eta, 1 - pixels), -pixels)
        eta.requires_grad_(True)
        loss = self.criterion(self.attack_model()(self.space.to_normalized(pixels + eta)), target)  # no DDP sync
        (grad,) = torch.autograd.grad(loss, eta)
        delta = eta.detach() + self.step_size * grad.sign()
        delta = torch.max(torch.min(delta, 1 - pixels), -pixels)
        if self.clip is not None:
            delta = delta.clamp(-self.clip * self.eps, self.clip * self.eps)
        return delta.detach()

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        pixels = self.space.to_pixel(input.detach())
        adv = self.space.to_normalized(pixels + self.perturb(pixels, target))
        output = self.trainable_module(adv)
        loss = self.criterion(output, target)
        return {'loss': loss, 'output': output, 'ce': loss.detach()}

    def extra_repr(self) -> str:
        return (f'eps={self.eps:.5f}, noise={self.noise}, step_size={self.step_size:.5f}, clip={self.clip}, '
                + super().extra_repr())
