"""Adversarial-training tasks: the PGD-3 skyline (or APGD's step rule) and FGSM with random start."""
import abc
from typing import Dict, Optional

import torch

from ..core.apgd import apgd_attack
from ..core.attacks import ITERATE_SELECTIONS, fgsm_attack, pgd_attack
from ..core.budget import check_attack_budget
from ..core.schedules import SCHEDULE_UNITS, LinearWarmup
from ._registry import register_task
from .base import GradRegTask
from .options import Option, attack_count, attack_radius, number

__all__ = ['AdversarialTask', 'PGDTask', 'FGSMTask', 'PGD_STEP_SIZE', 'ATTACK_ALGORITHMS', 'ATTACK_EPS',
           'ATTACK_STEP_SIZE', 'ATTACK_STEPS', 'ATTACK_SELECT',
           'ATTACK_WARMUP', 'ATTACK_WARMUP_PER']

_GROUP = 'Training attack (pgd, fgsm; gradnorm --gn-inputs pgd)'
#: The training attack's options, shared by the adversarial tasks and GradNorm's PGD inputs.
ATTACK_EPS = Option('--attack-eps', 'eps', attack_radius, 4 / 255, 'training attack radius in pixels',
                    metavar='EPS', group=_GROUP)
ATTACK_STEP_SIZE = Option('--attack-step-size', 'step_size', attack_radius, None,
                          'training attack step in pixels (default: 8/255/3 for pgd, 1.25·eps for fgsm)',
                          metavar='STEP', group=_GROUP)
ATTACK_STEPS = Option('--attack-steps', 'steps', attack_count, 3, 'PGD training steps',
                      metavar='N', group=_GROUP)
ATTACK_WARMUP = Option('--attack-warmup-epochs', 'warmup_epochs', number(0), 5.0,
                       'epochs over which the attack step rises linearly from 0; ε is fixed from the start',
                       metavar='N', group=_GROUP)
ATTACK_WARMUP_PER = Option('--attack-warmup-per', 'warmup_per', choices=SCHEDULE_UNITS, default='epoch',
                           help='the step warm-up advances at epoch boundaries (official: step·min(epoch, 5)/5) or '
                                'every iteration', group=_GROUP)
ATTACK_RANDOM_START = Option('--attack-random-start', 'random_start', bool, True,
                             'start training attacks from a uniform random point in the ε-ball',
                             group=_GROUP)
ATTACK_SELECT = Option('--attack-select', 'select', choices=ITERATE_SELECTIONS, default='last',
                       help="the PGD iterate trained on: the last; each sample's highest-loss one; or the one of "
                            'highest batch-mean loss for the whole batch (the official configs: replace_best under '
                            'attack_criterion mixup). The start and every step are candidates (one more forward)', group=_GROUP)
#: PGD's training step (8/255/3: the paper's PGD-3).
PGD_STEP_SIZE = 8 / 255 / 3
#: The pgd task's step rules.
ATTACK_ALGORITHMS = ('pgd', 'apgd')
ATTACK_ALGORITHM = Option('--attack-algorithm', 'algorithm', choices=ATTACK_ALGORITHMS, default='pgd',
                          help="the pgd task's step rule: fixed steps, or APGD's (Croce & Hein 2020) from the clean "
                               "image, its step 2ε halved where the loss stalls, each sample's best iterate trained "
                               'on (Singh et al. 2023 train on 2 of its steps: --attack-algorithm apgd '
                               '--attack-steps 2 --no-attack-random-start)', group=_GROUP)
_ATTACK_OPTIONS = [ATTACK_EPS, ATTACK_STEP_SIZE, ATTACK_RANDOM_START, ATTACK_WARMUP, ATTACK_WARMUP_PER, ATTACK_SELECT]


class AdversarialTask(GradRegTask):
    """Train on adversarial examples made by ``perturb`` with the model in eval mode.

    ``select`` picks the iterate trained on (``ITERATE_SELECTIONS``). ε is fixed from the first step; the
    attack *step* is warmed up linearly from 0 over
    ``warmup_epochs`` (Appendix G, Liu et al. 2023), at epoch boundaries (``warmup_per='epoch'``,
    the official ``step·min(epoch, 5)/5``: the first epoch's attack is the random start alone)
    or every iteration.
    """

    def __init__(self, model, criterion=None, *, eps: float = 4 / 255, random_start: bool = True,
                 warmup_epochs: float = 5.0, warmup_per: str = 'epoch', select: str = 'last', **kwargs):
        super().__init__(model, criterion, **kwargs)
        check_attack_budget(eps=eps)
        if select not in ITERATE_SELECTIONS:
            raise ValueError(f"Unknown iterate selection {select!r}; valid: {', '.join(ITERATE_SELECTIONS)}")
        self.select = select
        self.eps = float(eps)
        self.random_start = bool(random_start)
        self.warmup = LinearWarmup(warmup_epochs, per=warmup_per)
        self.uses_schedule = self.warmup.epochs > 0

    def step_scale(self) -> float:
        """Warm-up factor of the attack step at the current epoch."""
        return self.warmup(self.epoch)

    @abc.abstractmethod
    def perturb(self, input: torch.Tensor, target: torch.Tensor, step_scale: float) -> torch.Tensor:
        """Adversarial version of ``input`` (normalized space) with the step scaled by ``step_scale``."""

    def compute(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        scale = self.step_scale()
        adv = self.perturb(input, target, scale) if (scale > 0 or self.random_start) else input
        output = self.trainable_module(adv)
        loss = self.criterion(output, target)
        return {
            'loss': loss,
            'output': output,
            'ce': loss.detach(),
            'weight': torch.tensor(scale, device=loss.device),
        }


@register_task('pgd', options=_ATTACK_OPTIONS + [ATTACK_STEPS, ATTACK_ALGORITHM])
class PGDTask(AdversarialTask):
    """L∞ PGD adversarial training, the paper's skyline (ε 4/255, 3 steps of 8/255/3, random start).

    ``algorithm='apgd'`` takes APGD's steps instead (``core.apgd``), as Singh et al. (2023) train: from the clean
    image (``random_start=False``), its own step size (no ``step_size``), each sample's highest-loss iterate (the
    default ``select``); the warm-up scales its first step.

    Args:
        model, criterion: As for timm's ClassificationTask.
        eps, step_size, steps: Attack radius, step (None: 8/255/3) and iterations in pixel units.
        random_start: Uniform start in the ε-ball.
        algorithm: 'pgd' (fixed steps) or 'apgd' (APGD's step rule).
        warmup_epochs, warmup_per: The step rises linearly from 0 over these epochs, at epoch
            boundaries ('epoch', official) or every 'iteration' (5, 'epoch').
        select: The iterate trained on: 'last', 'sample' (each sample's highest-loss one) or 'batch' (the
            one of highest batch-mean loss: the official configs).
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    def __init__(self, model, criterion=None, *, eps: float = 4 / 255, step_size: Optional[float] = None,
                 steps: int = 3, algorithm: str = 'pgd', **kwargs):
        super().__init__(model, criterion, eps=eps, **kwargs)
        if algorithm not in ATTACK_ALGORITHMS:
            raise ValueError(f"Unknown attack algorithm {algorithm!r}; valid: {', '.join(ATTACK_ALGORITHMS)}")
        if algorithm == 'apgd' and (self.random_start or step_size is not None or self.select != 'last'):
            raise ValueError(
                'the apgd attack starts at the clean image, sets its own step (2ε, halved as it goes) and trains on '
                "each sample's best iterate: pass --no-attack-random-start (random_start=False) and neither "
                f'--attack-step-size nor --attack-select (got random_start={self.random_start}, '
                f'step_size={step_size}, select={self.select!r})')
        step_size = PGD_STEP_SIZE if step_size is None else step_size
        check_attack_budget(step_size=step_size, steps=steps)
        self.step_size = float(step_size)
        self.steps = int(steps)
        self.algorithm = algorithm

    def perturb(self, input: torch.Tensor, target: torch.Tensor, step_scale: float) -> torch.Tensor:
        if self.algorithm == 'apgd':
            return apgd_attack(self.attack_model(), input, target, eps=self.eps, steps=self.steps, space=self.space,
                               step_scale=step_scale)
        return pgd_attack(
            self.attack_model(), input, target, eps=self.eps, step_size=self.step_size * step_scale,
            steps=self.steps, space=self.space, random_start=self.random_start, select=self.select)

    def extra_repr(self) -> str:
        step = 'apgd' if self.algorithm == 'apgd' else f'step_size={self.step_size:.5f}'
        return (f'eps={self.eps:.5f}, {step}, steps={self.steps}, warmup={self.warmup}, select={self.select!r}, '
                + super().extra_repr())


@register_task('fgsm', options=_ATTACK_OPTIONS)
class FGSMTask(AdversarialTask):
    """FGSM-RS adversarial training: one step of 1.25·ε from a random start (Wong et al. 2020).

    Cheap, but overfits catastrophically in long runs (paper Appendix B); a baseline.

    Args:
        model, criterion: As for timm's ClassificationTask.
        eps: Attack radius in pixel units.
        step_size: Step in pixel units (1.25·ε with random start, ε without, if None).
        random_start, warmup_epochs, warmup_per, select: As for PGDTask.
        mean, std, criterion_kwargs, device, dtype, verbose: See GradRegTask.
    """

    def __init__(self, model, criterion=None, *, eps: float = 4 / 255, step_size: Optional[float] = None,
                 **kwargs):
        super().__init__(model, criterion, eps=eps, **kwargs)
        if step_size is None:
            step_size = 1.25 * eps if self.random_start else eps
        check_attack_budget(step_size=step_size)
        self.step_size = float(step_size)

    def perturb(self, input: torch.Tensor, target: torch.Tensor, step_scale: float) -> torch.Tensor:
        return fgsm_attack(
            self.attack_model(), input, target, eps=self.eps, step_size=self.step_size * step_scale,
            space=self.space, random_start=self.random_start, select=self.select)

    def extra_repr(self) -> str:
        return f'eps={self.eps:.5f}, step_size={self.step_size:.5f}, warmup={self.warmup}, ' + super().extra_repr()
