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


def check_attack_radius(value: float, what: str = 'ε') -> float:
    """``value`` if it is a radius or step an attack can move by: in (0, 1] pixel units."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        raise AttackBudgetError(f'{what} {value:g} cannot attack: give a value in (0, 1] pixel units, e.g. 4/255'
                                if isinstance(value, (int, float)) else f'{what} must be a number, got {value!r}')
    return float(value)


def check_attack_count(value: int, what: str = 'steps') -> int:
    """``value`` if it is a whole number >= 1 (steps, restarts, queries, samples of an attack)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttackBudgetError(f'{what} {value} cannot attack: give a whole number >= 1')
    return value


def check_attack_budget(*, eps: Optional[float] = None, step_size: Optional[float] = None,
                        steps: Optional[int] = None, restarts: Optional[int] = None,
                        queries: Optional[int] = None) -> None:
    """Refuse any given part of a budget that cannot attack (None: that part is not used)."""
    for name, value in (('ε', eps), ('step size', step_size)):
        if value is not None:
            check_attack_radius(value, name)
    for name, value in (('steps', steps), ('restarts', restarts), ('queries', queries)):
        if value is not None:
            check_attack_count(value, name)
