"""Paired tests and small-sample intervals against scipy's (an independent implementation)."""
import pytest

from timm_gradreg.evaluate.paired import mcnemar_exact, seed_interval, t_quantile_975, welch_interval

stats = pytest.importorskip('scipy.stats')


@pytest.mark.parametrize('df', list(range(1, 31)))
def test_t_quantile_is_students(df):
    assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)


@pytest.mark.parametrize('df', [31, 35, 45, 75, 99, 150, 500, 10_000])
def test_t_quantile_beyond_the_table_is_students_within_a_thousandth(df):
    assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-3)


def test_a_fractional_df_takes_the_wider_quantile():
    assert t_quantile_975(2.9) == t_quantile_975(2)


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


@pytest.mark.parametrize('a,b', [((25.7, 40.1, 100), (2.58, 3.2, 35)), ((0.52, 0.11, 100), (-0.04, 0.09, 100)),
                                 ((5.0, 1.0, 3), (4.0, 2.0, 5))])
def test_welch_interval_is_scipys(a, b):
    rng = __import__('numpy').random.default_rng(0)
    np = __import__('numpy')

    def sample(mean, sd, n):  # values with exactly this mean and (n - 1) standard deviation
        z = rng.standard_normal(n)
        z = (z - z.mean()) / z.std(ddof=1)
        return mean + sd * z
    xa, xb = sample(*a), sample(*b)
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    assert stats.ttest_ind(xa, xb, equal_var=False).df == pytest.approx(df)  # Welch-Satterthwaite, as scipy's
    half = stats.t.ppf(0.975, np.floor(df)) * np.sqrt(va + vb)  # the degrees of freedom rounded down: wider
    low, high = welch_interval(a, b)
    assert (low, high) == pytest.approx((a[0] - b[0] - half, a[0] - b[0] + half), rel=1e-3, abs=1e-9)
    assert np.isclose(xa.mean() - xb.mean(), a[0] - b[0])


def test_welch_interval_needs_two_values_a_side():
    with pytest.raises(ValueError, match='at least 2 values'):
        welch_interval((1.0, 0.0, 1), (2.0, 1.0, 5))
