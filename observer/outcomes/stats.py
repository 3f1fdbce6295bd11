"""The statistics of judging an intervention at small counts, in the standard library only.

Failures are Poisson in exposure (attempts, or hours as a last resort) in each window. Given the
total `F = f_before + f_after`, the failures after are `Binomial(F, π(R))` with
`π(R) = R·E_after / (E_before + R·E_after)` when the rate ratio after/before is `R`: the exact
conditional test of two Poisson rates (Gu, Ng, Tang & Schucany 2008; statsmodels'
`test_poisson_2indep(method="exact-cond")`), with a null ratio other than 1 for the
regression-to-the-mean adjustment. Its Clopper–Pearson interval of `f_after / F`, turned back into a
rate ratio, is the interval shown; Wilson intervals show one rate.

Every p-value here is a binomial tail summed exactly (log-gamma terms, the shorter side), so the
functions stay correct at 0 failures, at F in the thousands and at rates near 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import NamedTuple

from pydantic import BaseModel

#: Bisection steps for an interval bound: 2^-60 is far below any rate shown.
_BISECTION_STEPS = 60


# ── binomial tails ──────────────────────────────────────────────────────────────────────────────


def _pmf_sum(first: int, last: int, n: int, p: float) -> float:
    """Σ P(X = i) for i in first..last, X ~ Binomial(n, p), 0 < p < 1."""
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    return math.fsum(
        math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
        for i in range(first, last + 1)
    )


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X ≤ k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    if k < n * p:  # the lower tail is the short side: sum it
        return min(1.0, _pmf_sum(0, k, n, p))
    return max(0.0, 1.0 - _pmf_sum(k + 1, n, n, p))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if k > n * p:  # the upper tail is the short side: sum it
        return min(1.0, _pmf_sum(k, n, n, p))
    return max(0.0, 1.0 - _pmf_sum(0, k - 1, n, p))


# ── two Poisson rates ───────────────────────────────────────────────────────────────────────────


class RateCounts(NamedTuple):
    """Failures and exposure of the two windows of one episode."""

    f_before: int
    e_before: float
    f_after: int
    e_after: float

    @property
    def rate_before(self) -> float | None:
        return self.f_before / self.e_before if self.e_before > 0 else None

    @property
    def rate_after(self) -> float | None:
        return self.f_after / self.e_after if self.e_after > 0 else None

    @property
    def rate_ratio(self) -> float | None:
        """after/before, or None when either rate is unknown or the rate before is 0."""
        before, after = self.rate_before, self.rate_after
        if before is None or after is None or before == 0:
            return None
        return after / before


def share_after(counts: RateCounts, ratio: float) -> float:
    """π(R): the expected share of the failures that fall after, if the rate ratio is `ratio`."""
    weighted = ratio * counts.e_after
    return weighted / (counts.e_before + weighted)


def reduced_p(counts: RateCounts, ratio: float) -> float:
    """p-value against H0 "rate ratio ≥ `ratio`" (small: the rate fell below `ratio` × before)."""
    if counts.e_before <= 0 or counts.e_after <= 0:
        return 1.0
    total = counts.f_before + counts.f_after
    return binomial_cdf(counts.f_after, total, share_after(counts, ratio))


def increased_p(counts: RateCounts, ratio: float) -> float:
    """p-value against H0 "rate ratio ≤ `ratio`" (small: the rate stayed above `ratio` × before)."""
    if counts.e_before <= 0 or counts.e_after <= 0:
        return 1.0
    total = counts.f_before + counts.f_after
    return binomial_sf(counts.f_after, total, share_after(counts, ratio))


def clopper_pearson(successes: int, trials: int, level: float) -> tuple[float, float]:
    """The exact two-sided interval of a binomial proportion, found by bisection on the tails."""
    if trials <= 0:
        return 0.0, 1.0
    tail = (1.0 - level) / 2.0
    low = (
        0.0
        if successes == 0
        else _solve(lambda p: binomial_sf(successes, trials, p) - tail, increasing=True)
    )
    high = (
        1.0
        if successes == trials
        else _solve(lambda p: binomial_cdf(successes, trials, p) - tail, increasing=False)
    )
    return low, high


def _solve(function: Callable[[float], float], *, increasing: bool) -> float:
    """The root of a monotone function of p on (0, 1)."""
    low, high = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2.0
        value = function(middle)
        if (value < 0) == increasing:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


def rate_ratio_interval(counts: RateCounts, level: float) -> tuple[float | None, float | None]:
    """The exact conditional interval of the rate ratio after/before (None: unbounded or unknown).

    The Clopper–Pearson bounds (πL, πU) of `f_after / F` become `π / (1 − π) · E_before / E_after`.
    """
    if counts.e_before <= 0 or counts.e_after <= 0:
        return None, None
    total = counts.f_before + counts.f_after
    if total == 0:
        return 0.0, None
    low, high = clopper_pearson(counts.f_after, total, level)
    scale = counts.e_before / counts.e_after
    return low / (1.0 - low) * scale, (None if high >= 1.0 else high / (1.0 - high) * scale)


def wilson(failures: int, trials: float, level: float) -> tuple[float, float]:
    """Wilson's interval of one rate (shown beside a rate; fine at 0 and at n failures of n)."""
    if trials <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    share = min(1.0, failures / trials)
    denominator = 1.0 + z * z / trials
    centre = (share + z * z / (2.0 * trials)) / denominator
    half = z * math.sqrt(share * (1.0 - share) / trials + z * z / (4.0 * trials * trials))
    low = 0.0 if failures <= 0 else max(0.0, centre - half / denominator)
    high = 1.0 if share >= 1.0 else min(1.0, centre + half / denominator)
    return low, high


# ── regression to the mean ──────────────────────────────────────────────────────────────────────


class Bin(NamedTuple):
    """One slice of a key's baseline: its exposure and failures."""

    exposure: float
    failures: int


#: Fewer baseline bins with exposure than this: the prior weight is not estimated.
MIN_PRIOR_BINS = 4


def prior_weight(
    bins: Sequence[Bin], episode_exposure: float, *, default: float, low: float, high: float
) -> tuple[float, bool]:
    """The weight of the key's baseline in the empirical-Bayes rate of its episode, and whether it
    was estimated (else `default`).

    Gamma–Poisson (Hauer 1997): the episode's rate shrunk toward the baseline rate `m` is
    `(k·m + f) / (k + E)`, i.e. a weight `k / (k + E)` on `m`. `k = m / σ²`, σ² the variance of the
    true rate between bins beyond Poisson noise, by the method of moments:
    `σ² = (Σ (f_j − m·E_j)² − m·Σ E_j) / Σ E_j²`. The weight is kept within [low, high] so that
    neither the episode nor the baseline is ever ignored outright.
    """
    used = [b for b in bins if b.exposure > 0]
    exposure = math.fsum(b.exposure for b in used)
    failures = sum(b.failures for b in used)
    if len(used) < MIN_PRIOR_BINS or episode_exposure <= 0 or failures == 0:
        return default, False
    mean = failures / exposure
    spread = math.fsum((b.failures - mean * b.exposure) ** 2 for b in used) - mean * exposure
    variance = spread / math.fsum(b.exposure**2 for b in used)
    if variance <= 0:
        return high, True
    k = mean / variance
    return min(high, max(low, k / (k + episode_exposure))), True


def shrunk_rate(failures: int, exposure: float, base_rate: float, weight: float) -> float:
    """The episode's rate shrunk toward the baseline: `weight·base + (1 − weight)·f / E`."""
    own = failures / exposure if exposure > 0 else base_rate
    return weight * base_rate + (1.0 - weight) * own


def reference_decay(observed: float, expected: float) -> float | None:
    """How spikes that nobody corrected fared after, against their own empirical-Bayes forecast:
    observed failures / forecast failures, pooled over the spikes (None without a forecast)."""
    return observed / expected if expected > 0 else None


def between_variance(pairs: Sequence[tuple[int, float]], mean: float) -> float:
    """The variance of true ratios observed/forecast between spikes, beyond Poisson noise, by
    the method of moments with forecast weights (as DerSimonian & Laird pool studies):
    `(Σ e_k (r_k − r̄)² − (n − 1)·r̄) / (Σ e_k − Σ e_k² / Σ e_k)`, at least 0."""
    used = [(o, e) for o, e in pairs if e > 0]
    if len(used) < 2:
        return 0.0
    weights = math.fsum(e for _, e in used)
    spread = math.fsum(e * (o / e - mean) ** 2 for o, e in used) - (len(used) - 1) * mean
    scale = weights - math.fsum(e * e for _, e in used) / weights
    return max(0.0, spread / scale) if scale > 0 else 0.0


def gamma_quantile(q: float, mean: float, variance: float) -> float:
    """The q-quantile of a gamma distribution with this mean and variance (Wilson–Hilferty's cube
    approximation; the mean itself when the variance is 0)."""
    if variance <= 0 or mean <= 0:
        return max(0.0, mean)
    shape = mean * mean / variance
    z = NormalDist().inv_cdf(q)
    cube = 1.0 - 1.0 / (9.0 * shape) + z * math.sqrt(1.0 / (9.0 * shape))
    return mean * max(0.0, cube) ** 3


# ── pooling episodes (repeated advice) ──────────────────────────────────────────────────────────


def mantel_haenszel(strata: Sequence[RateCounts]) -> float | None:
    """The Mantel–Haenszel pooled rate ratio after/before over episodes (None when undefined)."""
    numerator = denominator = 0.0
    for s in strata:
        total = s.e_before + s.e_after
        if total <= 0:
            continue
        numerator += s.f_after * s.e_before / total
        denominator += s.f_before * s.e_after / total
    return numerator / denominator if denominator > 0 else None


def pooled_increased_p(strata: Sequence[RateCounts], ratios: Sequence[float]) -> float:
    """Exact pooled p-value against H0 "each episode's ratio ≤ its `ratios[k]`".

    Given each episode's total, its failures after are Binomial(F_k, π_k); the distribution of their
    sum is the convolution of those binomials (Martin & Austin 1996), built here by a short dynamic
    program; the p-value is its upper tail at the observed sum.
    """
    distribution = [1.0]
    observed = 0
    for counts, ratio in zip(strata, ratios, strict=True):
        if counts.e_before <= 0 or counts.e_after <= 0:
            continue
        total = counts.f_before + counts.f_after
        observed += counts.f_after
        share = share_after(counts, ratio)
        terms = [_pmf_sum(i, i, total, share) for i in range(total + 1)] if 0 < share < 1 else None
        if terms is None:
            terms = [0.0] * (total + 1)
            terms[total if share >= 1 else 0] = 1.0
        distribution = _convolve(distribution, terms)
    return min(1.0, math.fsum(distribution[observed:]))


def _convolve(left: list[float], right: list[float]) -> list[float]:
    result = [0.0] * (len(left) + len(right) - 1)
    for i, a in enumerate(left):
        if a == 0.0:
            continue
        for j, b in enumerate(right):
            result[i + j] += a * b
    return result


# ── after a success ─────────────────────────────────────────────────────────────────────────────


class BernoulliCusum(BaseModel):
    """Page's CUSUM for a failure rate returning from `p0` to `p1`, one attempt at a time:
    `S = max(0, S + x·ln(p1/p0) + (1 − x)·ln((1 − p1)/(1 − p0)))`, alarm at `S ≥ h`
    (Reynolds & Stoumbos 2001)."""

    p0: float
    p1: float
    h: float
    score: float = 0.0
    attempts: int = 0
    failures: int = 0

    def add(self, attempts: int, last_failed: bool) -> bool:
        """`attempts` more, of which only the last may have failed; True when the alarm rings."""
        if attempts <= 0:
            return False
        success_step = math.log((1.0 - self.p1) / (1.0 - self.p0))  # < 0: successes pull down
        successes = attempts - 1 if last_failed else attempts
        self.score = max(0.0, self.score + successes * success_step)
        if last_failed:
            self.score = max(0.0, self.score + math.log(self.p1 / self.p0))
            self.failures += 1
        self.attempts += attempts
        return self.score >= self.h


# ── recovery ────────────────────────────────────────────────────────────────────────────────────


def recovery_run(rate: float, level: float) -> float | None:
    """Attempts without a failure that would be improbable (< `level`) at `rate`:
    `ceil(ln level / ln(1 − rate))` (None when the rate is 0: no run is improbable)."""
    if rate <= 0:
        return None
    if rate >= 1:
        return 1.0
    return float(math.ceil(math.log(level) / math.log1p(-rate)))


def recovery_span(rate_per_hour: float, level: float) -> float | None:
    """Hours without a failure that would be improbable at a Poisson rate per hour."""
    return -math.log(level) / rate_per_hour if rate_per_hour > 0 else None
