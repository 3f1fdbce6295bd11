"""What an episode is judged against, read once when it opens: its exposure, its "before", the
key's own baseline and the decay of spikes nobody corrected.

All of it comes from the look-back window `[t0 − OBSERVER_OUTCOMES_BASELINE_DAYS, t0)`, cut into
bins of `OBSERVER_OUTCOMES_PRE_HOURS` counted back from `t0`: bin 0 is the pre-window (the episode
that prompted the intervention), the older bins are the baseline.

- **Exposure.** A key that has successes is judged per its own attempts; a key seen only on
  failures (a failure signature, a failure group) per the attempts of its endpoint; a key with no op
  at all before `t0` per hour, flagged: a drop in traffic then looks like a fix.
- **Empirical Bayes** (Hauer 1997). The "before" rate is the pre-window's, shrunk toward the key's
  baseline rate with a weight from how much the key's rate varies between baseline bins
  (`observer.outcomes.stats.prior_weight`).
- **Reference decay.** Other signatures of the same endpoint (other `sig_hash`es, task classes or
  failure groups) that spiked in the look-back (a bin with at least `SPIKE_MIN_FAILURES` failures
  and `SPIKE_FACTOR` × their own rate) and that no intervention touched: their failures in the
  hours after the spike, against what their own empirical-Bayes forecast said, at each horizon of
  `OutcomeRule.horizons` (spikes end in time, not in attempts). Spikes differ, so the decay to
  beat at a horizon is the `REFERENCE_QUANTILE` of a gamma spread of decays with their pooled mean
  and their variance beyond Poisson noise. Fewer than `REFERENCE_MIN_SPIKES` spikes at a horizon:
  the shorter horizon's decay (none at all: no reference, recorded as such).
- **The null ratio** a correction must beat at a horizon: `min(1, shrinkage × min(1, decay))`,
  where shrinkage is the counterfactual rate over the raw pre-window rate; at the window's close,
  at most the baseline rate over the pre-window rate. It only ever makes "worked" harder.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import polars as pl
from pydantic import BaseModel, Field

from observer.outcomes.interventions import Intervention, Key
from observer.outcomes.rule import OutcomeRule
from observer.outcomes.stats import (
    Bin,
    between_variance,
    gamma_quantile,
    prior_weight,
    reference_decay,
    shrunk_rate,
)
from observer.outcomes.view import Unit
from observer.pipelines.grouping import signature

_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Window(BaseModel):
    """Exposure (attempts, or hours when the unit is hours) and failures of one window."""

    exposure: float = 0.0
    failures: int = 0

    @property
    def rate(self) -> float | None:
        return self.failures / self.exposure if self.exposure > 0 else None


class Reference(BaseModel):
    """Spikes of other signatures of the endpoint that nobody corrected, and how they fared after,
    per horizon (`OutcomeRule.horizons`): in the hours after each spike, their failures against
    what their own empirical-Bayes forecast said for their attempts. Spikes end in time, not in
    attempts, so a look taken T hours after the intervention is held to the decay of the first
    horizon of at least T hours (a longer one has fallen further: the stricter of the two).

    Spikes do not all fall alike (some end at once, some run on), and the intervened key's spike
    may be any of them: the decay it must beat is the REFERENCE_QUANTILE of a gamma distribution
    of spike decays with the pooled mean and the variance between spikes (beyond Poisson noise),
    not the average."""

    spikes: int = 0
    covered: list[int] = Field(default_factory=list)  # per horizon: spikes it could follow
    observed: list[int] = Field(default_factory=list)  # per horizon: their failures
    expected: list[float] = Field(default_factory=list)  # per horizon: their forecast failures
    spread: list[float] = Field(default_factory=list)  # per horizon: variance between spikes
    decay: list[float | None] = Field(default_factory=list)  # per horizon: the decay to beat
    applies: bool = True  # False for playbooks: they are not triggered by failures

    @classmethod
    def of(
        cls, rule: OutcomeRule, spikes: int, outcomes: list[list[tuple[int, float]]]
    ) -> Reference:
        """From each horizon's (observed, forecast) failures of every spike it could follow."""
        reference = cls(spikes=spikes)
        for pairs in outcomes:
            observed = sum(o for o, _ in pairs)
            expected = math.fsum(e for _, e in pairs)
            mean = reference_decay(observed, expected)
            spread = between_variance(pairs, mean) if mean is not None else 0.0
            reference.covered.append(len(pairs))
            reference.observed.append(observed)
            reference.expected.append(expected)
            reference.spread.append(spread)
            decay = None
            if mean is not None and len(pairs) >= rule.reference_min_spikes:
                decay = gamma_quantile(rule.reference_quantile, mean, spread)
            reference.decay.append(decay)
        return reference


class Opening(BaseModel):
    """An episode's fixed "before": computed once, from the look-back, when it opens."""

    unit: Unit
    endpoint: str | None
    before: Window
    baseline: Window
    prior_weight: float
    prior_estimated: bool
    counterfactual_rate: float
    reference: Reference
    null_ratios: list[float]  # per horizon
    baseline_ratio: float | None  # the baseline rate over the raw rate before

    def null_ratio(self, elapsed: timedelta, rule: OutcomeRule, *, closing: bool = False) -> float:
        """The ratio the rate after must beat, `elapsed` into the post window: that of the first
        horizon at least as long. At the window's close, at most the baseline's: left alone long
        enough, a spike is back at the key's baseline."""
        hours = elapsed / timedelta(hours=1)
        index = next((i for i, h in enumerate(rule.horizons) if h >= hours), -1)
        ratio = self.null_ratios[index]
        if closing and self.baseline_ratio is not None:
            return min(ratio, self.baseline_ratio)
        return ratio

    @property
    def long_run_null(self) -> float:
        return self.null_ratios[-1]

    @property
    def null_rate(self) -> float:
        """The rate after, long-run, if the intervention did nothing."""
        return (self.before.rate or 0.0) * self.long_run_null


def key_matches(key: Key) -> pl.Expr:
    """Whether an op (or failure, for a group: needs `pattern`) belongs to the key."""
    if key.field == "group":
        return (pl.col("endpoint") == key.endpoint) & (pl.col("pattern") == key.pattern)
    return pl.col(key.field) == key.value


def signature_column(key: Key) -> str | None:
    """The column whose other values on the endpoint are the key's reference signatures."""
    return {"sig_hash": "sig_hash", "task_class": "task_class", "group": "pattern"}.get(key.field)


def reference_key(key: Key, endpoint: str, value: str) -> str:
    """The key id of another signature of the same kind (to leave out the touched ones)."""
    if key.field == "group":
        return f"group:{signature(endpoint, value)}"
    return f"{key.field}:{value}"


def open_episode(
    rule: OutcomeRule, intervention: Intervention, before: pl.DataFrame, touched: Collection[str]
) -> Opening:
    """The opening of an intervention's episode from the attempts of its look-back window.

    `before`: attempts (`observer.outcomes.frames.attempts`) with `pattern` when the key is a group,
    covering at least `[t0 − baseline, t0)`; `touched`: key ids that had an intervention (their
    spikes are not references).
    """
    key, t0 = intervention.key, intervention.at
    bins = math.ceil(rule.baseline / rule.pre)
    bin_us = rule.pre // _MICROSECOND
    in_window = (pl.col("ts") >= t0 - rule.baseline) & (pl.col("ts") < t0)
    binned = ((pl.lit(t0) - pl.col("ts")).dt.total_microseconds() // bin_us).cast(pl.Int64)
    own = before.filter(in_window & key_matches(key)).with_columns(binned.alias("bin"))
    endpoint = key.endpoint or _most_common_endpoint(own)
    scope = (
        before.filter(in_window & (pl.col("endpoint") == endpoint)).with_columns(
            binned.alias("bin")
        )
        if endpoint is not None
        else own.clear()
    )
    unit = _unit(key, own, endpoint)

    successes = _per_bin(scope.filter(pl.col("success")))
    failures = _per_bin(own.filter(~pl.col("success")))
    if unit == "attempts":
        exposure = _per_bin(own)
    elif unit == "endpoint-attempts":  # the endpoint's attempts at risk: not failed otherwise
        exposure = {b: successes.get(b, 0) + failures.get(b, 0) for b in range(bins)}
    else:
        exposure = _hours_per_bin(rule, bins)
    series = [Bin(exposure.get(b, 0.0), int(failures.get(b, 0))) for b in range(bins)]
    reference = Reference(applies=intervention.kind != "playbook")
    column = signature_column(key)
    if reference.applies and column is not None and endpoint is not None:
        reference = _reference(rule, key, t0, scope, column, successes, touched)
    return opening_of(rule, unit, endpoint, series, reference)


def opening_of(
    rule: OutcomeRule, unit: Unit, endpoint: str | None, series: list[Bin], reference: Reference
) -> Opening:
    """The opening from the key's bins (bin 0 the pre-window, then back in time) and reference."""
    pre, baseline = series[0], series[1:]
    before = Window(exposure=pre.exposure, failures=pre.failures)
    base = Window(
        exposure=math.fsum(b.exposure for b in baseline), failures=sum(b.failures for b in baseline)
    )
    weight, estimated = _weight(rule, baseline, pre.exposure)
    if base.rate is None:  # no baseline: nothing to shrink toward
        weight, estimated = 0.0, False
    counterfactual = shrunk_rate(pre.failures, pre.exposure, base.rate or 0.0, weight)
    raw = before.rate
    shrinkage = min(1.0, counterfactual / raw) if raw else 1.0
    ratios, decay = [], 1.0
    for index in range(len(rule.horizons)):
        measured = reference.decay[index] if index < len(reference.decay) else None
        decay = min(1.0, measured) if measured is not None else decay  # else the shorter one's
        ratios.append(min(1.0, shrinkage * decay))
    return Opening(
        unit=unit,
        endpoint=endpoint,
        before=before,
        baseline=base,
        prior_weight=weight,
        prior_estimated=estimated,
        counterfactual_rate=counterfactual,
        reference=reference,
        null_ratios=ratios,
        baseline_ratio=min(1.0, base.rate / raw) if raw and base.rate is not None else None,
    )


def _most_common_endpoint(own: pl.DataFrame) -> str | None:
    if own.height == 0:
        return None
    counts = own.group_by("endpoint").len().sort(["len", "endpoint"], descending=[True, False])
    return counts["endpoint"][0]


def _unit(key: Key, own: pl.DataFrame, endpoint: str | None) -> Unit:
    if key.field == "endpoint":
        return "attempts"
    if key.field != "group" and own["success"].any():
        return "attempts"
    return "endpoint-attempts" if endpoint is not None else "hours"


def _per_bin(frame: pl.DataFrame) -> dict[int, float]:
    counted = frame.group_by("bin").len()
    return dict(zip(counted["bin"].to_list(), counted["len"].to_list(), strict=True))


def _hours_per_bin(rule: OutcomeRule, bins: int) -> dict[int, float]:
    """Hours in each bin (the oldest one may be cut short by the look-back's start)."""
    whole = rule.pre / timedelta(hours=1)
    last = (rule.baseline - rule.pre * (bins - 1)) / timedelta(hours=1)
    return {b: (last if b == bins - 1 else whole) for b in range(bins)}


def _weight(rule: OutcomeRule, baseline: list[Bin], exposure: float) -> tuple[float, bool]:
    return prior_weight(
        baseline,
        exposure,
        default=rule.shrink_weight,
        low=rule.shrink_weight_min,
        high=rule.shrink_weight_max,
    )


def _reference(
    rule: OutcomeRule,
    key: Key,
    t0: datetime,
    scope: pl.DataFrame,
    column: str,
    successes_per_bin: dict[int, float],
    touched: Collection[str],
) -> Reference:
    """Spikes of the endpoint's other signatures that no intervention touched, and their decay.

    A spike ends a baseline bin; what follows it is counted in the ops after that moment (its own
    attempts, or the endpoint's attempts at risk for it when it is seen only on failures), over
    each horizon that ends before the intervention."""
    endpoint = scope["endpoint"][0]
    bins = math.ceil(rule.baseline / rule.pre)
    cells = (
        scope.filter(pl.col(column).is_not_null())
        .group_by(column, "bin")
        .agg(pl.len().alias("ops"), (~pl.col("success")).sum().alias("failures"))
    )
    by_signature: dict[str, dict[int, tuple[int, int]]] = {}
    for value, b, ops, failed in cells.iter_rows():
        by_signature.setdefault(value, {})[b] = (ops, failed)
    own_value = key.pattern if key.field == "group" else key.value
    horizons = [round(h * 3600e6) for h in rule.horizons]  # µs
    outcomes: list[list[tuple[int, float]]] = [[] for _ in horizons]  # (observed, forecast)
    spikes_found = 0
    moment, width = (t0 - _EPOCH) // _MICROSECOND, rule.pre // _MICROSECOND  # bins end t0 − b·pre
    successes = _micros(scope.filter(pl.col("success")).sort("ts"))
    times_of = {
        value: (sorted(every), sorted(failed))
        for value, every, failed in scope.filter(pl.col(column).is_not_null())
        .group_by(column)
        .agg(
            pl.col("ts").dt.epoch("us").alias("every"),
            pl.col("ts").filter(~pl.col("success")).dt.epoch("us").alias("failed"),
        )
        .iter_rows()
    }
    for value, cells_of in sorted(by_signature.items()):
        if value == own_value or reference_key(key, endpoint, value) in touched:
            continue
        has_successes = any(ops > failed for ops, failed in cells_of.values())
        series = [
            Bin(
                float(cells_of.get(b, (0, 0))[0])
                if has_successes
                else successes_per_bin.get(b, 0) + cells_of.get(b, (0, 0))[1],
                cells_of.get(b, (0, 0))[1],
            )
            for b in range(bins)
        ]
        spikes = _spikes(rule, series)
        if not spikes:
            continue
        every, failures = times_of[value]
        # Its exposure: its own attempts, or the endpoint's attempts at risk for it (the
        # endpoint's successes and its own failures).
        exposed = [every] if has_successes else [successes, failures]
        for b, rate in spikes:
            spikes_found += 1
            since = moment - b * width
            for j, span in enumerate(horizons):
                if since + span > moment:
                    break  # it would run past the intervention: unknown
                exposure = sum(_count(times, since, since + span) for times in exposed)
                outcomes[j].append((_count(failures, since, since + span), rate * exposure))
    return Reference.of(rule, spikes_found, outcomes)


def _micros(frame: pl.DataFrame) -> list[int]:
    return frame["ts"].dt.epoch("us").to_list()


def _count(times: list[int], low: int, high: int) -> int:
    """How many of the sorted times fall in [low, high)."""
    return bisect.bisect_left(times, high) - bisect.bisect_left(times, low)


def _spikes(rule: OutcomeRule, series: list[Bin]) -> list[tuple[int, float]]:
    """(spike bin, its empirical-Bayes rate) of one signature: bins with at least
    SPIKE_MIN_FAILURES failures at SPIKE_FACTOR × the signature's rate, not overlapping.

    Bins run back in time from the intervention; what follows spike `b` starts where it ends.
    """
    exposure = math.fsum(b.exposure for b in series)
    rate = sum(b.failures for b in series) / exposure if exposure > 0 else 0.0
    found: list[tuple[int, float]] = []
    b = len(series) - 1
    while b >= 1:
        spike = series[b]
        if (
            spike.failures >= rule.spike_min_failures
            and spike.exposure > 0
            and spike.failures / spike.exposure >= rule.spike_factor * rate
        ):
            rest = [x for i, x in enumerate(series) if i not in (b, b - 1)]
            rest_exposure = math.fsum(x.exposure for x in rest)
            base = sum(x.failures for x in rest) / rest_exposure if rest_exposure > 0 else 0.0
            weight, _ = _weight(rule, rest, spike.exposure)
            found.append((b, shrunk_rate(spike.failures, spike.exposure, base, weight)))
            b -= 2
        else:
            b -= 1
    return found


def touched_keys(corrections: pl.DataFrame) -> set[str]:
    """Key ids of the corrections among look-back ops (their signatures are not references)."""
    keys = corrections.select(
        pl.when(pl.col("sig_hash").is_not_null())
        .then(pl.lit("sig_hash:") + pl.col("sig_hash"))
        .otherwise(pl.lit("task_class:") + pl.col("task_class"))
        .alias("key")
    )
    return {k for k in keys["key"].to_list() if k is not None}
