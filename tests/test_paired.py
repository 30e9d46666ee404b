"""Paired tests and small-sample intervals against scipy's (an independent implementation)."""
import pytest

from timm_gradreg.evaluate.paired import mcnemar_exact, seed_interval, t_quantile_975

stats = pytest.importorskip('scipy.stats')


@pytest.mark.parametrize('df', list(range(1, 31)))
def test_t_quantile_is_students(df):
    assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)


def test_t_quantile_beyond_the_table_is_within_two_percent_of_students():
    assert t_quantile_975(200) == pytest.approx(stats.t.ppf(0.975, 200), rel=0.02)


@pytest.mark.parametrize('only_a,only_b,both,neither', [(21, 4, 300, 175), (5, 5, 10, 0), (0, 7, 3, 1), (13, 9, 0, 0)])
def test_mcnemar_exact_is_the_binomial_test_of_the_discordant_images(only_a, only_b, both, neither):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    got_a, got_b, p = mcnemar_exact(a, b)
    assert (got_a, got_b) == (only_a, only_b)
    assert p == pytest.approx(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue, rel=1e-9)


def test_21_against_4_discordant_images_is_decided():
    assert mcnemar_exact([True] * 21 + [False] * 4, [False] * 21 + [True] * 4)[2] == pytest.approx(0.000911, rel=1e-3)


def test_seed_interval_is_the_t_interval():
    values = [62.4, 63.8, 61.4]
    low, high = seed_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 3, scale=stats.sem(values))
    assert (low, high) == pytest.approx(ref, rel=1e-5)


def test_mismatched_images_are_refused():
    with pytest.raises(ValueError, match='same images'):
        mcnemar_exact([True, False], [True])
