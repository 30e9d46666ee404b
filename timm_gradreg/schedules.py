"""Regularizer weight schedules, functions of the (fractional) training epoch.

Tasks receive ``epoch + step / steps_per_epoch`` through ``set_epoch`` so that a
schedule is updated every iteration and survives resume (the position is the epoch).
"""
import math
from dataclasses import dataclass

__all__ = ['LinearWarmup', 'LinearGrowth']


@dataclass(frozen=True)
class LinearWarmup:
    """Factor rising linearly from 0 to 1 over ``epochs`` epochs (1 from the start if 0)."""
    epochs: float = 5.0

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f'warm-up epochs must be >= 0, got {self.epochs}')

    def __call__(self, epoch: float) -> float:
        if self.epochs == 0:
            return 1.0
        return min(1.0, max(0.0, epoch / self.epochs))


@dataclass(frozen=True)
class LinearGrowth:
    """``start + rate * epoch`` capped at ``cap``; with ``per_epoch`` it steps at epoch boundaries.

    The edge regularizer's weight: 1, growing 0.09 per epoch, capped at 19 (the paper's schedule).
    """
    start: float = 1.0
    rate: float = 0.09
    cap: float = 19.0
    per_epoch: bool = True

    def __call__(self, epoch: float) -> float:
        epoch = math.floor(epoch) if self.per_epoch else epoch
        return min(self.cap, self.start + self.rate * max(0.0, epoch))
