"""The values the methods and tools take, as command-line and config converters: numbers and fractions
written as ε is usually written (``4/255``, ``8/255/3``), pixel amounts, attack radii and counts.

Each converter raises ``argparse.ArgumentTypeError`` with a message naming the value and what is allowed; an
attack budget that cannot attack is refused with ``core.budget``'s rule.
"""
import argparse
import fractions
from typing import Any, Callable, Optional

from .budget import AttackBudgetError, check_attack_count, check_attack_radius

__all__ = ['fraction', 'number', 'pixel_amount', 'attack_radius', 'attack_count', 'sigma_value', 'ball_radius',
           'ball_radius_or_zero']


def fraction(value: Any) -> float:
    """A float, or a fraction such as '4/255' or '8/255/3' (how ε and steps are usually written)."""
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(f'expected a number, got {value!r}')
    if isinstance(value, (int, float)):
        return float(value)
    try:
        first, *divisors = (fractions.Fraction(part.strip()) for part in str(value).split('/'))
        for divisor in divisors:
            first /= divisor
        return float(first)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number or a fraction like 4/255, got '{value}'") from None


def _shown(value: Any, amount: float) -> str:
    """A value as the user wrote it, with its decimal value where it was a fraction ('8/255 = 0.0313725')."""
    return f'{value}' if '/' not in str(value) else f'{value} = {amount:g}'


def pixel_amount(value: Any) -> float:
    """An ε or a step size in pixel units (images span [0, 1]): a number in [0, 1], usually written as a
    fraction of 255 ('4/255')."""
    amount = fraction(value)
    if not 0 <= amount <= 1:
        shown = _shown(value, amount)
        raise argparse.ArgumentTypeError(f'{shown} is outside [0, 1], the pixel range of images: give ε and step '
                                         'sizes in pixel units, e.g. in the fraction form 2/255')
    return amount


pixel_amount.__name__ = 'pixel amount in [0, 1]'


def attack_radius(value: Any) -> float:
    """An attack's ε or step in pixel units, in (0, 1]: a radius of 0 cannot attack (``core.budget``)."""
    amount = pixel_amount(value)  # outside [0, 1]: the pixel-range message
    try:
        return check_attack_radius(amount, 'value')
    except AttackBudgetError:
        raise argparse.ArgumentTypeError(f'{_shown(value, amount)} cannot attack: give a value in (0, 1] pixel units, '
                                         'e.g. 4/255') from None


attack_radius.__name__ = 'attack radius in (0, 1]'


def attack_count(value: Any) -> int:
    """An attack's steps, restarts or queries: a whole number >= 1 (fewer attack nothing, ``core.budget``)."""
    try:
        amount = fraction(value)
        return check_attack_count(int(amount) if amount == int(amount) else amount, 'value')
    except (AttackBudgetError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f'{value} cannot attack: give a whole number >= 1') from None


attack_count.__name__ = 'whole number >= 1'


def number(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
           integer: bool = False) -> Callable[[Any], float]:
    """A converter for numbers (fractions allowed) in [low, high] (``low_open``: (low, high])."""
    def convert(value: Any):
        number_ = fraction(value)
        if integer:
            if number_ != int(number_):
                raise argparse.ArgumentTypeError(f'expected a whole number, got {value}')
            number_ = int(number_)
        if low is not None and (number_ <= low if low_open else number_ < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {value}")
        if high is not None and number_ > high:
            raise argparse.ArgumentTypeError(f'must be <= {high:g}, got {value}')
        return number_
    bounds = f"{'(' if low_open else '['}{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"
    convert.__name__ = f"{'int' if integer else 'number'} in {bounds}"
    return convert


def sigma_value(value: Any) -> Any:
    """'channel' or a positive number."""
    if value == 'channel':
        return value
    number_ = fraction(value)
    if number_ <= 0:
        raise argparse.ArgumentTypeError(f"sigma must be 'channel' or > 0, got {value}")
    return number_


def ball_radius_or_zero(value: Any) -> float:
    """An ε of any threat model in pixel units, 0 allowed (a sweep's clean point); the L∞ bound of 1 is checked
    once the norm is known."""
    amount = fraction(value)
    if amount < 0:
        raise argparse.ArgumentTypeError(f'{_shown(value, amount)} is outside [0, ∞): give ε in pixel units '
                                         '(under L∞ at most 1), e.g. 4/255')
    return amount


ball_radius_or_zero.__name__ = 'radius >= 0'


def ball_radius(value: Any) -> float:
    """An attack's ε of any threat model in pixel units, > 0 (a radius of 0 cannot attack)."""
    amount = ball_radius_or_zero(value)
    if amount == 0:
        raise argparse.ArgumentTypeError(f'{value} cannot attack: give a value > 0 in pixel units (under L∞ in '
                                         '(0, 1]), e.g. 4/255')
    return amount


ball_radius.__name__ = 'radius > 0'
