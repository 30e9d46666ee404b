"""Comparisons that a reviewer accepts: paired tests on shared images, small-sample intervals over seeds.

Two models attacked on the same images are compared image by image: only the images where they disagree
(one robust, the other not) carry information, and McNemar's exact test asks whether those split evenly.
A mean over a few training seeds has a spread that a normal quantile understates: with k seeds its interval
takes Student's t with k − 1 degrees of freedom.
"""
import math
from typing import Sequence, Tuple

__all__ = ['mcnemar_exact', 't_quantile_975', 'seed_interval']

#: Student's t 0.975 quantiles by degrees of freedom (the standard table; beyond 30 the normal's 1.96 is within 2%)
_T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
         10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098, 18: 2.1009,
         19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595, 26: 2.0555, 27: 2.0518,
         28: 2.0484, 29: 2.0452, 30: 2.0423}


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` >= 1 degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f'degrees of freedom must be >= 1, got {df}')
    return _T975.get(df, 1.959964)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> Tuple[int, int, float]:
    """(images only ``a`` got right, images only ``b`` got right, the two-sided exact p-value) for two models'
    per-image results on the same images: the binomial test of the discordant images against an even split."""
    if len(a) != len(b):
        raise ValueError(f'paired results need the same images: {len(a)} against {len(b)}')
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 0, 0, 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return only_a, only_b, min(1.0, 2 * tail)


def seed_interval(values: Sequence[float]) -> Tuple[float, float]:
    """95% interval of the mean of per-seed values: mean ± t(k − 1)·s/√k (the values themselves with one seed)."""
    k = len(values)
    mean = sum(values) / k
    if k < 2:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = t_quantile_975(k - 1) * sd / math.sqrt(k)
    return mean - half, mean + half
