"""Comparisons that a reviewer accepts: paired tests on shared images, small-sample intervals over seeds.

Two models attacked on the same images are compared image by image: only the images where they disagree
(one robust, the other not) carry information, and McNemar's exact test asks whether those split evenly.
A mean over a few training seeds has a spread that a normal quantile understates: with k seeds its interval
takes Student's t with k − 1 degrees of freedom. Two means known by their summaries (mean, standard deviation,
count) are compared by Welch's interval of their difference.
"""
import math
from typing import Sequence, Tuple

__all__ = ['mcnemar_exact', 't_quantile_975', 'seed_interval', 'welch_interval']

#: Student's t 0.975 quantiles by degrees of freedom (the standard table; beyond 30 the normal's 1.96 is within 2%)
_T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646, 8: 2.3060, 9: 2.2622,
         10: 2.2281, 11: 2.2010, 12: 2.1788, 13: 2.1604, 14: 2.1448, 15: 2.1314, 16: 2.1199, 17: 2.1098, 18: 2.1009,
         19: 2.0930, 20: 2.0860, 21: 2.0796, 22: 2.0739, 23: 2.0687, 24: 2.0639, 25: 2.0595, 26: 2.0555, 27: 2.0518,
         28: 2.0484, 29: 2.0452, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799}
_NORMAL975 = 1.959964


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` >= 1 degrees of freedom (two-sided 95%); a fractional ``df`` is
    rounded down (the wider interval). Past the table's rows the quantile is interpolated linearly in 1/df, as
    the standard tables advise, to the normal's at infinity."""
    if df < 1:
        raise ValueError(f'degrees of freedom must be >= 1, got {df}')
    df = int(df)
    if df in _T975:
        return _T975[df]
    rows = sorted(_T975)
    low = max(r for r in rows if r < df)
    high = min((r for r in rows if r > df), default=math.inf)
    t_high = _T975[high] if high != math.inf else _NORMAL975
    w = (1 / low - 1 / df) / (1 / low - (0 if high == math.inf else 1 / high))
    return _T975[low] + w * (t_high - _T975[low])


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


def welch_interval(a: Tuple[float, float, int], b: Tuple[float, float, int]) -> Tuple[float, float]:
    """95% interval of mean(a) − mean(b) from each side's (mean, standard deviation, count): Welch's t interval,
    its degrees of freedom by Welch–Satterthwaite. Each side needs at least 2 values."""
    (ma, sa, na), (mb, sb, nb) = a, b
    if na < 2 or nb < 2:
        raise ValueError(f'Welch\'s interval needs at least 2 values a side, got {na} and {nb}')
    va, vb = sa ** 2 / na, sb ** 2 / nb
    diff = ma - mb
    if va + vb == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = t_quantile_975(max(1, math.floor(df))) * math.sqrt(va + vb)
    return diff - half, diff + half
