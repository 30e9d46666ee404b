"""Robust accuracy under PGD: worst case over losses and restarts, swept over ε.

A sample counts as robust at ε only if every attack (each loss × restart) fails on it.
An adversarial example found at a smaller ε is also one at a larger ε, so the sweep
attacks at ε_k only the samples that survived ε_{k-1}: the curve is monotone by
construction and the cost shrinks as accuracy falls.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from ..core.attacks import PGD_STEP_FACTOR, pgd_attack
from ..core.budget import AttackBudgetError, check_attack_budget
from ..utils.progress import Progress, count_forwards

__all__ = ['DEFAULT_SWEEP_EPS', 'PGDSweepConfig', 'SweepResult', 'worst_case_correct', 'pgd_sweep']

_logger = logging.getLogger(__name__)

#: ε grid of the accuracy-vs-ε curve (paper Fig. 2), in units of 1/255.
DEFAULT_SWEEP_EPS = tuple(e / 255 for e in (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32))


@dataclass(frozen=True)
class PGDSweepConfig:
    """PGD-N over an ε list; step α = step_size_factor·ε/steps (Madry et al.'s 2.5ε/N)."""
    eps: Sequence[float] = DEFAULT_SWEEP_EPS
    steps: int = 100
    restarts: int = 1
    losses: Sequence[str] = ('ce', 'dlr')
    step_size_factor: float = PGD_STEP_FACTOR
    norm: str = 'Linf'

    def __post_init__(self):
        check_attack_budget(steps=self.steps, restarts=self.restarts)
        if not self.step_size_factor > 0:
            raise AttackBudgetError(f'step size factor {self.step_size_factor:g} cannot attack: give a value > 0')
        high = 1.0 if self.norm == 'Linf' else float('inf')
        if any(not 0 <= e <= high for e in self.eps) or not any(e > 0 for e in self.eps):
            raise AttackBudgetError(f"ε list {[float(e) for e in self.eps]} attacks nothing: give values in "
                                    f"{'[0, 1]' if self.norm == 'Linf' else '[0, ∞)'} pixel units, at least one of "
                                    'them > 0 (0 is the clean point)')
        if not self.losses:
            raise AttackBudgetError('no attack loss: give at least one of ce, dlr, margin')

    def step_size(self, eps: float) -> float:
        return self.step_size_factor * eps / self.steps


@dataclass
class SweepResult:
    """Per-sample outcomes: ``clean`` [N] and ``robust`` [len(eps), N] booleans, in dataset order."""
    eps: List[float]
    clean: torch.Tensor
    robust: torch.Tensor
    indices: List[int] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return int(self.clean.numel())

    def clean_accuracy(self) -> float:
        return 100.0 * self.clean.float().mean().item()

    def accuracy(self) -> Dict[float, float]:
        """ε -> robust top-1 (%)."""
        return {e: 100.0 * row.float().mean().item() for e, row in zip(self.eps, self.robust)}


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(-1) == y


def worst_case_correct(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        *,
        steps: int,
        step_size: float,
        restarts: int = 1,
        losses: Sequence[str] = ('ce',),
        direction: str = 'sign',
        norm: str = 'Linf',
        still_correct: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Boolean [B]: correct under every attack (each loss × restart). Pixel-space model and inputs."""
    check_attack_budget(steps=steps, restarts=restarts)
    correct = _correct(model, x, y) if still_correct is None else still_correct.clone()
    if eps <= 0:  # the clean point of a sweep
        return correct
    for loss in losses:
        for _ in range(restarts):
            idx = correct.nonzero().squeeze(1)
            if idx.numel() == 0:
                return correct
            adv = pgd_attack(model, x[idx], y[idx], eps=eps, step_size=step_size, steps=steps, loss=loss,
                             random_start=True, direction=direction, norm=norm)
            correct[idx] = _correct(model, adv, y[idx])
    return correct


def pgd_sweep(
        model: nn.Module,
        loader,
        config: PGDSweepConfig = PGDSweepConfig(),
        device: torch.device = torch.device('cpu'),
        show_progress: bool = True,
        desc: str = 'PGD sweep',
) -> SweepResult:
    """Clean and robust per-sample flags over ``config.eps`` for a pixel-space model in eval mode."""
    model.eval()
    eps = sorted(float(e) for e in config.eps)
    losses = list(config.losses)
    num_classes = None
    clean, robust = [], [[] for _ in eps]
    with Progress(1 + len(loader) * _forwards_per_batch(eps, config, len(losses)), desc, enabled=show_progress) as bar, \
            count_forwards(model, bar):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if num_classes is None:
                with torch.no_grad():
                    num_classes = model(x[:1]).shape[-1]
                if num_classes < 3 and 'dlr' in losses:
                    _logger.warning('DLR needs at least 3 classes; using the other losses only.')
                    losses = [l for l in losses if l != 'dlr'] or ['ce']
                    bar.set_total(1 + len(loader) * _forwards_per_batch(eps, config, len(losses)))
            batch_end = bar.done + _forwards_per_batch(eps, config, len(losses))
            ok = _correct(model, x, y)
            clean.append(ok.cpu())
            previous = ok
            for i, e in enumerate(eps):
                previous = worst_case_correct(model, x, y, e, steps=config.steps, step_size=config.step_size(e),
                                              restarts=config.restarts, losses=losses, norm=config.norm,
                                              still_correct=previous)
                robust[i].append(previous.cpu())
            bar.advance_to(batch_end)  # attacks skipped once no sample was left
    return SweepResult(eps=eps, clean=torch.cat(clean), robust=torch.stack([torch.cat(r) for r in robust]))


def _forwards_per_batch(eps: Sequence[float], config: PGDSweepConfig, num_losses: int) -> int:
    """Model forward passes for one batch: the clean pass, then per ε > 0 each attack's steps and its check."""
    attacked = sum(1 for e in eps if e > 0)
    return 1 + attacked * num_losses * config.restarts * (config.steps + 1)
