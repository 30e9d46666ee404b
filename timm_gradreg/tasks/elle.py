"""ELLE (Abad Rocamora et al., ICLR 2024): single-step adversarial training plus a local-linearity penalty of the
loss, measured on random triplets of points, without double backprop."""
import math
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from ..core.attacks import cross_entropy_per_sample
from ..core.budget import check_attack_budget
from ._registry import register_task
from .base import GradRegTask
from .options import Option, attack_radius, number

__all__ = ['ELLETask', 'AdaptiveWeight']

_GROUP = 'ELLE (--gradreg elle)'
_OPTIONS = [
    Option('--elle-eps', 'eps', attack_radius, help='ε in pixels: the FGSM step and the triplets\' radius',
           metavar='EPS', group=_GROUP),
    Option('--elle-lambda', 'weight', number(0),
           help="λ of the linearity penalty; with --elle-adaptive, the value it jumps to (the authors' CIFAR-10 "
                'scripts at 8/255: 1000 constant, 4000 adaptive)', metavar='L', group=_GROUP),
    Option('--elle-adaptive', 'adaptive', bool,
           help='ELLE-A: λ starts at 0, jumps to --elle-lambda when the penalty exceeds its running mean by '
                '--elle-sensitivity standard deviations, and is multiplied by --elle-decay at every step without one',
           group=_GROUP),
    Option('--elle-decay', 'decay', number(0, 1), help='ELLE-A: λ\'s factor per step without a jump',
           metavar='D', group=_GROUP),
    Option('--elle-sensitivity', 'sensitivity', number(0),
           help='ELLE-A: standard deviations above the running mean that count as a jump', metavar='S',
           group=_GROUP),
    Option('--elle-noise', 'noise', number(0),
           help='uniform noise before the FGSM step, half-width in units of ε (0: ELLE; 2: N-FGSM + ELLE)',
           metavar='K', group=_GROUP),
]


class AdaptiveWeight:
    """ELLE-A's λ: 0 until the penalty of a step exceeds mean + s·std of all earlier steps' (population std, after
    three steps), then ``top``, times ``decay`` each step without such a jump. The history is kept as its count,
    mean and sum of squared deviations (Welford), which give the authors' ``np.mean``/``np.std`` of the list."""

    def __init__(self, top: float, decay: float, sensitivity: float):
        self.top, self.decay, self.sensitivity = top, decay, sensitivity
        self.value, self.count, self.mean, self.m2 = 0.0, 0, 0.0, 0.0

    def update(self, penalty: float) -> None:
        """Set the weight of the next step from this step's penalty, then add the penalty to the history."""
        std = math.sqrt(self.m2 / self.count) if self.count else 0.0
        if self.count > 2 and penalty > self.mean + self.sensitivity * std:
            self.value = self.top
        else:
            self.value *= self.decay
        self.count += 1
        delta = penalty - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (penalty - self.mean)

    def state_dict(self) -> Dict[str, float]:
        return {'elle_weight': self.value, 'elle_count': self.count, 'elle_mean': self.mean, 'elle_m2': self.m2}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if 'elle_weight' in state:
            self.value, self.count = float(state['elle_weight']), int(state['elle_count'])
            self.mean, self.m2 = float(state['elle_mean']), float(state['elle_m2'])


@register_task('elle', options=_OPTIONS)
class ELLETask(GradRegTask):
    """CE(f(x + δ), y) + λ·mean_b (ℓ(x_c) − (1−α)ℓ(x_a) − α·ℓ(x_b))²: the linearity error of the per-sample
    loss ℓ on a random triplet.

    As the authors' ``Trainer.loss`` (LIONS-EPFL/ELLE, core/utils/train.py, ``--reg ELLE``): δ is one signed
    step of ε from x (after uniform noise of k·ε where k > 0), not clipped to [0, 1] nor, the step being ε, beyond
    the ε-ball; x_a, x_b = x + U(−ε, ε)^d (not clipped), α ~ U(0, 1) per sample, x_c = (1−α)x_a + α·x_b; the
    three go through the model in one forward pass (their BatchNorm statistics are those of the 3B batch), every
    pass in the model's own mode (theirs stays in train mode), the FGSM pass on the model without DDP. The uniform
    draws are taken in one call, sample-major (``draws``), where theirs are drawn tensor by tensor: the same
    distribution, and gradient accumulation and DDP draw what one batch would. ``adaptive`` is ELLE-A (``--lambda_schedule onoff``); its λ follows the mean penalty over the processes, so
    all processes agree, and is saved in the checkpoint's task state. Pixel units throughout.

    Args:
        model, criterion: As for timm's ClassificationTask (the criterion is the adversarial term's).
        eps: ε in pixels (8/255: their CIFAR-10 runs).
        weight: λ, or ELLE-A's jump value (their scripts at 8/255: 1000; ELLE-A 4000).
        adaptive: ELLE-A's schedule of λ.
        decay, sensitivity: ELLE-A's decay per step (0.99) and jump threshold in standard deviations (2).
        noise: k, the half-width of the noise before the step in units of ε (0).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    def __init__(self, model, criterion=None, *, eps: float = 8 / 255, weight: float = 1000.0,
                 adaptive: bool = False, decay: float = 0.99, sensitivity: float = 2.0, noise: float = 0.0,
                 **kwargs):
        super().__init__(model, criterion, **kwargs)
        check_attack_budget(eps=eps)
        if weight < 0 or noise < 0 or sensitivity < 0 or not 0 <= decay <= 1:
            raise ValueError(f'need weight, noise, sensitivity >= 0 and 0 <= decay <= 1, got weight={weight}, '
                             f'noise={noise}, sensitivity={sensitivity}, decay={decay}')
        self.eps, self.weight, self.noise = float(eps), float(weight), float(noise)
        self.adaptive = bool(adaptive)
        self.schedule = AdaptiveWeight(self.weight, float(decay), float(sensitivity)) if self.adaptive else None

    def current_weight(self) -> float:
        """λ of this step."""
        return self.schedule.value if self.schedule is not None else self.weight

    def draws(self, pixels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The step's uniform draws in [0, 1), taken in one call, sample-major (each sample's noise where k > 0, its
        two ends, its α), so micro-batches and processes draw what one batch would."""
        batch, size = pixels.shape[0], pixels[0].numel()
        noise = size if self.noise > 0 else 0
        u = torch.rand_like(pixels.new_empty(batch, noise + 2 * size + 1))
        shape = pixels.shape[1:]
        return {'noise': u[:, :noise].reshape(batch, *shape) if noise else None,
                'a': u[:, noise:noise + size].reshape(batch, *shape),
                'b': u[:, noise + size:noise + 2 * size].reshape(batch, *shape),
                'alpha': u[:, -1].reshape(batch, *([1] * len(shape)))}

    def perturb(self, pixels: torch.Tensor, target: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        """The FGSM point x + δ (pixels, detached); ``noise``: uniform [0, 1) draws where k > 0."""
        start = pixels if noise is None else pixels + self.noise * self.eps * (2 * noise - 1)
        start = start.detach().requires_grad_(True)
        loss = self.criterion(self.attack_model()(self.space.to_normalized(start)), target)  # no DDP sync
        (grad,) = torch.autograd.grad(loss, start)
        return (start + self.eps * grad.sign()).detach()

    def linearity_error(self, pixels: torch.Tensor, target: torch.Tensor, draws: Dict[str, torch.Tensor]):
        """mean_b (ℓ(x_c) − (1−α)ℓ(x_a) − α·ℓ(x_b))² on one random triplet per sample (``draws``' a, b, α)."""
        batch, alpha = pixels.shape[0], draws['alpha']
        ends = torch.cat([pixels + self.eps * (2 * draws[k] - 1) for k in ('a', 'b')], dim=0)
        middle = (1 - alpha) * ends[:batch] + alpha * ends[batch:]
        points = torch.cat((ends, middle), dim=0)
        targets = target.repeat(3, *([1] * (target.ndim - 1)))
        losses = cross_entropy_per_sample(self.trainable_module(self.space.to_normalized(points)), targets)
        alpha = alpha.flatten().to(losses.dtype)
        linear = (1 - alpha) * losses[:batch] + alpha * losses[batch:2 * batch]
        return (losses[2 * batch:] - linear).square().mean()

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        pixels = self.space.to_pixel(input.detach())
        draws = self.draws(pixels)
        output = self.trainable_module(self.space.to_normalized(self.perturb(pixels, target, draws['noise'])))
        ce = self.criterion(output, target)
        penalty = self.linearity_error(pixels, target, draws)
        weight = self.current_weight()
        if self.schedule is not None and self.training and not penalty.is_meta:  # (meta: a memory prediction)
            self.schedule.update(self._mean_over_processes(penalty))
        return {'loss': ce + weight * penalty, 'output': output, 'ce': ce.detach(), 'penalty': penalty.detach(),
                'weight': torch.tensor(weight, device=ce.device)}

    @staticmethod
    def _mean_over_processes(value: torch.Tensor) -> float:
        value = value.detach().clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(value)
            value /= dist.get_world_size()
        return float(value)

    def get_task_state(self, module=None, ema: bool = False) -> Dict[str, Any]:
        state = super().get_task_state(module, ema)
        return {**state, **self.schedule.state_dict()} if self.schedule is not None else state

    def load_task_state(self, state, strict: bool = True, module=None, ema: bool = False) -> None:
        super().load_task_state(state, strict, module, ema)
        if state and not ema and self.schedule is not None:
            self.schedule.load_state_dict(state)

    def extra_repr(self) -> str:
        return (f'eps={self.eps:.5f}, weight={self.weight}, adaptive={self.adaptive}, noise={self.noise}, '
                + super().extra_repr())
