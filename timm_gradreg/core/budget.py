"""The one rule for attack budgets: a budget that cannot attack is refused, never reported.

An attack of 0 steps, 0 restarts, 0 queries, radius 0 or step 0 leaves every image as it is, so
the accuracy it "measures" is clean accuracy reported as robustness. Every attack and evaluation
entry point (training attacks, robust validation, the PGD sweep, AutoAttack, the checklist, the
analyses) checks its budget here, and the command-line converters raise the same messages.
"""
import math
from typing import Optional

__all__ = ['AttackBudgetError', 'check_attack_radius', 'check_attack_count', 'check_attack_budget']


class AttackBudgetError(ValueError):
    """An attack budget that cannot attack (radius or step <= 0, or fewer than one step, restart, query)."""


def check_attack_radius(value: float, what: str = 'ε', norm: str = 'Linf') -> float:
    """``value`` if it is a radius or step an attack can move by: in (0, 1] pixel units for an L∞ ball, > 0 for an
    L2 ball (whose radius over a whole image exceeds one pixel's range, e.g. 3 on ImageNet)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise AttackBudgetError(f'{what} must be a number, got {value!r}')
    high = 1.0 if norm == 'Linf' else math.inf
    if not (math.isfinite(value) and 0 < value <= high):
        allowed = '(0, 1] pixel units, e.g. 4/255' if norm == 'Linf' else f'> 0 (the {norm} length in pixel units)'
        raise AttackBudgetError(f'{what} {value:g} cannot attack: give a value in {allowed}'
                                if norm == 'Linf' else f'{what} {value:g} cannot attack: give a value {allowed}')
    return float(value)


def check_attack_count(value: int, what: str = 'steps') -> int:
    """``value`` if it is a whole number >= 1 (steps, restarts, queries, samples of an attack)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttackBudgetError(f'{what} {value} cannot attack: give a whole number >= 1')
    return value


def check_attack_budget(*, eps: Optional[float] = None, step_size: Optional[float] = None,
                        steps: Optional[int] = None, restarts: Optional[int] = None,
                        queries: Optional[int] = None, norm: str = 'Linf') -> None:
    """Refuse any given part of a budget that cannot attack (None: that part is not used)."""
    for name, value in (('ε', eps), ('step size', step_size)):
        if value is not None:
            check_attack_radius(value, name, norm)
    for name, value in (('steps', steps), ('restarts', restarts), ('queries', queries)):
        if value is not None:
            check_attack_count(value, name)
