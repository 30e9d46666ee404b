"""Regularizer weight schedules, functions of the (fractional) training epoch.

Tasks receive ``epoch + step / steps_per_epoch`` through ``set_epoch`` so that a
schedule is updated every iteration and survives resume (the position is the epoch).
"""
import math
from dataclasses import dataclass

__all__ = ['LinearWarmup', 'LinearGrowth', 'SCHEDULE_UNITS']


#: How a schedule advances: every iteration (the fractional epoch), or at epoch boundaries.
SCHEDULE_UNITS = ('iteration', 'epoch')


def _position(epoch: float, per: str) -> float:
    if per not in SCHEDULE_UNITS:
        raise ValueError(f"schedule unit must be one of {', '.join(SCHEDULE_UNITS)}, got {per!r}")
    return float(math.floor(epoch)) if per == 'epoch' else epoch


@dataclass(frozen=True)
class LinearWarmup:
    """Factor rising linearly from 0 to 1 over ``epochs`` epochs (1 from the start if 0).

    ``per='iteration'`` follows the fractional epoch; ``per='epoch'`` steps at epoch boundaries
    (min(floor(epoch), E) / E: the official PGD step warm-up, 0 in the first epoch).
    """
    epochs: float = 5.0
    per: str = 'iteration'

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f'warm-up epochs must be >= 0, got {self.epochs}')
        _position(0.0, self.per)

    def __call__(self, epoch: float) -> float:
        if self.epochs == 0:
            return 1.0
        return min(1.0, max(0.0, _position(epoch, self.per) / self.epochs))


@dataclass(frozen=True)
class LinearGrowth:
    """``start + rate * epoch`` capped at ``cap``, per iteration (the fractional epoch) or per epoch.

    The edge regularizer's weight: 1, growing 0.09 per epoch, capped at 19, updated every
    iteration (the official schedule).
    """
    start: float = 1.0
    rate: float = 0.09
    cap: float = 19.0
    per: str = 'iteration'

    def __post_init__(self):
        _position(0.0, self.per)

    def __call__(self, epoch: float) -> float:
        return min(self.cap, self.start + self.rate * max(0.0, _position(epoch, self.per)))
