"""Uncertainty of an accuracy measured on a sample of images: the Wilson score interval.

A robust accuracy on a few hundred images moves by several points from one subset to another; the
interval says how far. Wilson's interval (not the normal approximation) stays inside [0, 100] and is
honest at accuracies near 0 or 100 and at small n.
"""
import math
from typing import Tuple

__all__ = ['wilson_interval', 'format_accuracy']


def wilson_interval(accuracy: float, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95% (z = 1.96) interval, in percent, of an accuracy (percent) measured on ``n`` samples."""
    if n <= 0:
        return 0.0, 100.0
    p = accuracy / 100.0
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return 100.0 * max(center - half, 0.0), 100.0 * min(center + half, 1.0)


def format_accuracy(accuracy: float, n: int) -> str:
    """'75.21% (n=359, 95% CI 70.5-79.4)'."""
    low, high = wilson_interval(accuracy, n)
    return f'{accuracy:.2f}% (n={n}, 95% CI {low:.1f}-{high:.1f})'
