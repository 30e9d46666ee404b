"""Adversarial-training tasks: the PGD-3 skyline and FGSM with random start."""
import abc
from typing import Dict, Optional

import torch

from ..attacks import fgsm_attack, pgd_attack
from ..schedules import LinearWarmup
from ._registry import register_task
from .base import GradRegTask
from .options import Option, number

__all__ = ['AdversarialTask', 'PGDTask', 'FGSMTask', 'ATTACK_EPS', 'ATTACK_STEP_SIZE', 'ATTACK_STEPS']

_GROUP = 'Training attack (pgd, fgsm; gradnorm --gn-inputs pgd)'
#: The training attack's options, shared by the adversarial tasks and GradNorm's PGD inputs.
ATTACK_EPS = Option('--attack-eps', 'eps', number(0), 4 / 255, 'training attack radius in pixels (default: 4/255)',
                    metavar='EPS', group=_GROUP)
ATTACK_STEP_SIZE = Option('--attack-step-size', 'step_size', number(0), None,
                          'training attack step in pixels (default: 8/255/3 for pgd, 1.25·eps for fgsm)',
                          metavar='STEP', group=_GROUP)
ATTACK_STEPS = Option('--attack-steps', 'steps', number(1, integer=True), 3, 'PGD training steps (default: 3)',
                      metavar='N', group=_GROUP)
ATTACK_WARMUP = Option('--attack-warmup-epochs', 'warmup_epochs', number(0), 5.0,
                       'epochs over which the attack radius and step rise from 0 (default: 5)', metavar='N',
                       group=_GROUP)
ATTACK_RANDOM_START = Option('--attack-random-start', 'random_start', bool, True,
                             'start training attacks from a uniform random point in the ε-ball (default: on)',
                             group=_GROUP)
_ATTACK_OPTIONS = [ATTACK_EPS, ATTACK_STEP_SIZE, ATTACK_RANDOM_START, ATTACK_WARMUP]


class AdversarialTask(GradRegTask):
    """Train on adversarial examples made by ``perturb`` with the model in eval mode.

    The attack radius and step grow linearly from 0 over ``warmup_epochs`` (updated
    per iteration); at strength 0 the clean batch is used.
    """


    def __init__(self, model, criterion=None, *, eps: float = 4 / 255, random_start: bool = True,
                 warmup_epochs: float = 5.0, **kwargs):
        super().__init__(model, criterion, **kwargs)
        if eps < 0:
            raise ValueError(f'eps must be >= 0, got {eps}')
        self.eps = float(eps)
        self.random_start = bool(random_start)
        self.warmup = LinearWarmup(warmup_epochs)
        self.uses_schedule = self.warmup.epochs > 0

    def attack_strength(self) -> float:
        """Warm-up factor applied to ε and the step at the current epoch."""
        return self.warmup(self.epoch)

    @abc.abstractmethod
    def perturb(self, input: torch.Tensor, target: torch.Tensor, strength: float) -> torch.Tensor:
        """Adversarial version of ``input`` (normalized space) at the given warm-up strength."""

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        strength = self.attack_strength()
        adv = self.perturb(input, target, strength) if strength > 0 else input
        output = self.trainable_module(adv)
        loss = self.criterion(output, target)
        return {
            'loss': loss,
            'output': output,
            'ce': loss.detach(),
            'weight': torch.tensor(strength, device=loss.device),
        }


@register_task('pgd', options=_ATTACK_OPTIONS + [ATTACK_STEPS])
class PGDTask(AdversarialTask):
    """L∞ PGD adversarial training, the paper's skyline (ε 4/255, 3 steps of 8/255/3, random start).

    Args:
        model, criterion: As for timm's ClassificationTask.
        eps, step_size, steps: Attack radius, step and iterations in pixel units.
        random_start: Uniform start in the ε-ball.
        warmup_epochs: ε and step rise linearly from 0 over these epochs (5).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    def __init__(self, model, criterion=None, *, eps: float = 4 / 255, step_size: float = 8 / 255 / 3,
                 steps: int = 3, **kwargs):
        super().__init__(model, criterion, eps=eps, **kwargs)
        if step_size < 0 or steps < 1:
            raise ValueError(f'need step_size >= 0 and steps >= 1, got {step_size}, {steps}')
        self.step_size = float(step_size)
        self.steps = int(steps)

    def perturb(self, input: torch.Tensor, target: torch.Tensor, strength: float) -> torch.Tensor:
        return pgd_attack(
            self.attack_model(), input, target, eps=self.eps * strength, step_size=self.step_size * strength,
            steps=self.steps, space=self.space, random_start=self.random_start)

    def extra_repr(self) -> str:
        return (f'eps={self.eps:.5f}, step_size={self.step_size:.5f}, steps={self.steps}, '
                f'warmup={self.warmup.epochs}, ' + super().extra_repr())


@register_task('fgsm', options=_ATTACK_OPTIONS)
class FGSMTask(AdversarialTask):
    """FGSM-RS adversarial training: one step of 1.25·ε from a random start (Wong et al. 2020).

    Cheap, but overfits catastrophically in long runs (paper Appendix B); a baseline.

    Args:
        model, criterion: As for timm's ClassificationTask.
        eps: Attack radius in pixel units.
        step_size: Step in pixel units (1.25·ε with random start, ε without, if None).
        random_start, warmup_epochs: As for PGDTask.
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    def __init__(self, model, criterion=None, *, eps: float = 4 / 255, step_size: Optional[float] = None,
                 **kwargs):
        super().__init__(model, criterion, eps=eps, **kwargs)
        if step_size is None:
            step_size = 1.25 * eps if self.random_start else eps
        if step_size < 0:
            raise ValueError(f'step_size must be >= 0, got {step_size}')
        self.step_size = float(step_size)

    def perturb(self, input: torch.Tensor, target: torch.Tensor, strength: float) -> torch.Tensor:
        return fgsm_attack(
            self.attack_model(), input, target, eps=self.eps * strength, step_size=self.step_size * strength,
            space=self.space, random_start=self.random_start)

    def extra_repr(self) -> str:
        return f'eps={self.eps:.5f}, step_size={self.step_size:.5f}, ' + super().extra_repr()
