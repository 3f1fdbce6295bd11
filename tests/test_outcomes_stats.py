"""The outcome statistics against values computed another way (brute force, closed forms, the
published figures they come from)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from observer.outcomes.stats import (
    BernoulliCusum,
    Bin,
    RateCounts,
    between_variance,
    binomial_cdf,
    binomial_sf,
    clopper_pearson,
    gamma_quantile,
    increased_p,
    mantel_haenszel,
    pooled_increased_p,
    prior_weight,
    rate_ratio_interval,
    recovery_run,
    recovery_span,
    reduced_p,
    share_after,
    wilson,
)


def _pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


@pytest.mark.parametrize("n", [0, 1, 7, 40])
@pytest.mark.parametrize("p", [0.0, 0.03, 0.5, 0.97, 1.0])
def test_binomial_tails_match_a_direct_sum(n: int, p: float) -> None:
    for k in range(-1, n + 2):
        below = sum(_pmf(i, n, p) for i in range(0, min(k, n) + 1))
        above = sum(_pmf(i, n, p) for i in range(max(k, 0), n + 1))
        assert binomial_cdf(k, n, p) == pytest.approx(below, abs=1e-12)
        assert binomial_sf(k, n, p) == pytest.approx(above, abs=1e-12)


def test_binomial_tails_stay_exact_far_out() -> None:
    # 0 failures of 2000 at 1%: (0.99)^2000, far below what 1 - (the rest) could resolve.
    assert binomial_cdf(0, 2000, 0.01) == pytest.approx(0.99**2000, rel=1e-9)
    assert binomial_sf(2000, 2000, 0.5) == pytest.approx(0.5**2000, rel=1e-9)


def test_the_conditional_test_of_the_notes_example() -> None:
    # 1 failure of 10 before, 0 of 40 after: the exact p is 0.2 (a flat-prior posterior says 0.95).
    counts = RateCounts(1, 10, 0, 40)
    assert share_after(counts, 1.0) == pytest.approx(0.8)
    assert reduced_p(counts, 1.0) == pytest.approx(0.2)
    assert increased_p(counts, 1.0) == pytest.approx(1.0)


def test_a_null_ratio_below_one_makes_a_reduction_harder_to_claim() -> None:
    counts = RateCounts(30, 100, 2, 100)
    assert reduced_p(counts, 1.0) < reduced_p(counts, 0.5) < reduced_p(counts, 0.1)
    # H0 "ratio <= R" is rejected less easily as R grows.
    assert increased_p(counts, 0.01) < increased_p(counts, 0.05)


def test_no_exposure_decides_nothing() -> None:
    assert reduced_p(RateCounts(5, 10, 0, 0), 1.0) == 1.0
    assert increased_p(RateCounts(0, 0, 5, 10), 1.0) == 1.0
    assert rate_ratio_interval(RateCounts(5, 10, 0, 0), 0.95) == (None, None)


def test_clopper_pearson_against_closed_forms() -> None:
    low, high = clopper_pearson(0, 10, 0.95)
    assert low == 0.0
    assert high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    low, high = clopper_pearson(10, 10, 0.95)
    assert low == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    assert high == 1.0
    low, high = clopper_pearson(5, 10, 0.95)
    assert (round(low, 4), round(high, 4)) == (0.1871, 0.8129)


def test_the_rate_ratio_interval_covers_the_estimate() -> None:
    counts = RateCounts(20, 200, 5, 100)
    low, high = rate_ratio_interval(counts, 0.95)
    assert low is not None and high is not None
    assert low < counts.rate_ratio < high  # type: ignore[operator]
    # No failure after: the interval starts at 0; no failure before: it has no upper end.
    assert rate_ratio_interval(RateCounts(20, 200, 0, 100), 0.95)[0] == 0.0
    assert rate_ratio_interval(RateCounts(0, 200, 3, 100), 0.95)[1] is None


def test_wilson_at_the_edges() -> None:
    low, high = wilson(0, 10, 0.95)
    assert low == 0.0
    assert high == pytest.approx(0.2775, abs=1e-4)
    assert wilson(10, 10, 0.95)[1] == 1.0
    assert wilson(0, 0, 0.95) == (0.0, 1.0)


def test_prior_weight_follows_how_much_the_rate_varies() -> None:
    steady = [Bin(100, 5)] * 10
    wild = [Bin(100, 0), Bin(100, 30)] * 5
    high, estimated = prior_weight(steady, 100, default=0.5, low=0.2, high=0.8)
    assert (high, estimated) == (0.8, True)  # no variance beyond Poisson: the baseline rules
    low, estimated = prior_weight(wild, 100, default=0.5, low=0.2, high=0.8)
    assert (low, estimated) == (0.2, True)  # the rate swings: the episode's own rate rules
    assert prior_weight(steady[:3], 100, default=0.5, low=0.2, high=0.8) == (0.5, False)
    assert prior_weight([Bin(100, 0)] * 10, 100, default=0.5, low=0.2, high=0.8) == (0.5, False)


def test_mantel_haenszel_of_one_episode_is_its_rate_ratio() -> None:
    counts = RateCounts(20, 200, 5, 100)
    assert mantel_haenszel([counts]) == pytest.approx(counts.rate_ratio)
    assert mantel_haenszel([RateCounts(0, 10, 0, 10)]) is None


def test_the_pooled_exact_test_is_the_convolution() -> None:
    strata = [RateCounts(6, 50, 4, 30), RateCounts(3, 20, 5, 25), RateCounts(0, 10, 2, 10)]
    ratios = [0.5, 0.4, 0.3]
    assert pooled_increased_p(strata[:1], ratios[:1]) == pytest.approx(
        increased_p(strata[0], ratios[0])
    )
    # Brute force over every outcome of the three conditional binomials.
    totals = [s.f_before + s.f_after for s in strata]
    shares = [share_after(s, r) for s, r in zip(strata, ratios, strict=True)]
    observed = sum(s.f_after for s in strata)
    brute = sum(
        math.prod(_pmf(x, n, p) for x, n, p in zip(xs, totals, shares, strict=True))
        for xs in itertools.product(*(range(n + 1) for n in totals))
        if sum(xs) >= observed
    )
    assert pooled_increased_p(strata, ratios) == pytest.approx(brute, rel=1e-12)


def test_cusum_rings_on_the_old_rate_and_not_on_the_new() -> None:
    # p0 = 5%, p1 = 40%, h = 4: each failure adds ln 8 = 2.08, so two failures in a row ring.
    cusum = BernoulliCusum(p0=0.05, p1=0.4, h=4)
    assert cusum.add(1, True) is False
    assert cusum.add(1, True) is True
    # At the new rate for many attempts (a fixed seed), the score keeps falling back to 0.
    quiet = BernoulliCusum(p0=0.05, p1=0.4, h=12)
    rng = random.Random(7)
    assert not any(quiet.add(1, rng.random() < 0.05) for _ in range(5000))
    # A return to 40% is found within a few attempts.
    assert any(quiet.add(1, rng.random() < 0.4) for _ in range(60))


def test_recovery_run_and_span() -> None:
    assert recovery_run(0.3, 0.05) == math.ceil(math.log(0.05) / math.log(0.7)) == 9
    assert recovery_run(0.0, 0.05) is None
    assert recovery_span(2.0, 0.05) == pytest.approx(-math.log(0.05) / 2)


def test_gamma_quantile_and_the_variance_between_spikes() -> None:
    # Gamma(shape 2, scale 1): the true quartile is 0.9613; Wilson–Hilferty is within 1%.
    assert gamma_quantile(0.25, 2.0, 2.0) == pytest.approx(0.9613, rel=0.01)
    assert gamma_quantile(0.25, 0.7, 0.0) == 0.7
    # Spikes that all decay alike (Poisson noise only) show no variance between them.
    rng = random.Random(3)
    alike = [(sum(rng.random() < 0.2 for _ in range(200)), 40.0) for _ in range(40)]
    mean = sum(o for o, _ in alike) / sum(e for _, e in alike)
    assert between_variance(alike, mean) < 0.01
    mixed = [(0, 40.0)] * 20 + [(40, 40.0)] * 20
    assert between_variance(mixed, 0.5) > 0.2
