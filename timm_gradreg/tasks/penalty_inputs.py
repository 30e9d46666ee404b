"""Where GradNorm takes its penalty: the clean batch, or the batch perturbed by Gaussian noise, uniform noise or
PGD (paper Table 8). Each is a small object built from its own options and chosen by name (``--gn-inputs``).

    >>> inputs = create_penalty_inputs('noise', noise_std=4 / 255)
    >>> x_penalized = inputs(task, x, target)   # normalized images in, normalized images out
"""
from typing import Any, Optional

import torch

from ..core.attacks import pgd_attack
from ..core.schedules import LinearWarmup
from ..utils.registry import Registry
from .adversarial import ATTACK_EPS, ATTACK_SELECT, ATTACK_STEP_SIZE, ATTACK_STEPS, ATTACK_WARMUP, ATTACK_WARMUP_PER
from .options import Option, TaskPart, create_part, number, pixel_amount, register_part

__all__ = ['PenaltyInputs', 'CleanInputs', 'NoisyInputs', 'UniformInputs', 'PGDInputs', 'PENALTY_INPUTS',
           'create_penalty_inputs']

#: name -> class: the images the penalty is taken on (``--gn-inputs``)
PENALTY_INPUTS: Registry[type] = Registry('GradNorm penalty inputs')
#: the GradNorm option that chooses the inputs
SWITCH = 'inputs'


class PenaltyInputs(TaskPart):
    """The images the penalty is taken on, from the normalized batch ``x`` (the base: ``x`` itself)."""

    @property
    def uses_schedule(self) -> bool:
        """Whether the inputs depend on the training position (a warmed-up attack step)."""
        return False

    def __call__(self, task: Any, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x


@register_part(PENALTY_INPUTS, SWITCH, 'clean')
class CleanInputs(PenaltyInputs):
    """The clean batch (the paper's GradNorm)."""


@register_part(PENALTY_INPUTS, SWITCH, 'noise', [
    Option('--gn-noise-std', 'noise_std', number(0), help='pixel std of the noise for --gn-inputs noise',
           metavar='STD')])
class NoisyInputs(PenaltyInputs):
    """Gaussian noise of std ``noise_std`` in pixel space, clipped to [0, 1] (paper Table 8)."""

    def __init__(self, noise_std: float = 4 / 255):
        self.noise_std = float(noise_std)

    def __call__(self, task, x, target):
        pixels = task.space.to_pixel(x)
        pixels = (pixels + self.noise_std * torch.randn_like(pixels)).clamp(0.0, 1.0)
        return task.space.to_normalized(pixels)

    def extra_repr(self) -> str:
        return f'noise_std={self.noise_std:.5f}'


@register_part(PENALTY_INPUTS, SWITCH, 'uniform', [
    Option('--gn-uniform-eps', 'uniform_eps', pixel_amount,
           help='half-width in pixels of the noise for --gn-inputs uniform (default: the official '
                'random_start_eps_factor 0.5 of --gn-eps)', metavar='EPS')])
class UniformInputs(PenaltyInputs):
    """Uniform noise in [−r, r] per pixel, clipped to [0, 1]: the official random start, r = 0.5·ε of GradNorm
    (``uniform_eps`` None) or ``uniform_eps``."""

    def __init__(self, uniform_eps: Optional[float] = None):
        self.uniform_eps = None if uniform_eps is None else float(uniform_eps)

    def radius(self, task: Any) -> float:
        return 0.5 * task.eps if self.uniform_eps is None else self.uniform_eps

    def __call__(self, task, x, target):
        pixels = task.space.to_pixel(x)
        r = self.radius(task)
        noise = torch.empty_like(pixels).uniform_(-r, r)
        return task.space.to_normalized((pixels + noise).clamp(0.0, 1.0))

    def extra_repr(self) -> str:
        return 'uniform_eps=0.5·eps' if self.uniform_eps is None else f'uniform_eps={self.uniform_eps:.5f}'


@register_part(PENALTY_INPUTS, SWITCH, 'pgd', [
    ATTACK_EPS.to('attack_eps'), ATTACK_STEP_SIZE.to('attack_step_size'), ATTACK_STEPS.to('attack_steps'),
    ATTACK_WARMUP.to('attack_warmup_epochs'), ATTACK_WARMUP_PER.to('attack_warmup_per'),
    ATTACK_SELECT.to('attack_select')])
class PGDInputs(PenaltyInputs):
    """PGD from a uniform start (paper Table 8), its step warmed up and its iterate selected as the pgd task's;
    the attack runs on the model without DDP, with its parameters frozen."""

    def __init__(self, attack_eps: float = 4 / 255, attack_step_size: Optional[float] = None, attack_steps: int = 3,
                 attack_warmup_epochs: float = 5.0, attack_warmup_per: str = 'epoch', attack_select: str = 'last'):
        self.eps = float(attack_eps)
        self.step_size = 8 / 255 / 3 if attack_step_size is None else float(attack_step_size)
        self.steps = int(attack_steps)
        self.warmup = LinearWarmup(attack_warmup_epochs, per=attack_warmup_per)
        self.select = attack_select

    @property
    def uses_schedule(self) -> bool:
        return self.warmup.epochs > 0

    def __call__(self, task, x, target):
        return pgd_attack(task.attack_model(), x, target, eps=self.eps,
                          step_size=self.step_size * self.warmup(task.epoch), steps=self.steps, space=task.space,
                          select=self.select)

    def extra_repr(self) -> str:
        return (f'eps={self.eps:.5f}, step_size={self.step_size:.5f}, steps={self.steps}, warmup={self.warmup}, '
                f'select={self.select!r}')


def create_penalty_inputs(name: str, **kwargs) -> PenaltyInputs:
    """The penalty inputs ``name`` (``PENALTY_INPUTS``) built from its options."""
    return create_part(PENALTY_INPUTS, SWITCH, name, kwargs)
