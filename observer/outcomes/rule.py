"""The rule: every threshold of the judgement, its planned looks, and its version.

The thresholds come from the settings (`OBSERVER_OUTCOMES_*`). The version names the method
(`RULE_METHOD`, bumped when the method changes) and a digest of the thresholds, so every record says
exactly which rule judged it, and an episode keeps the rule it was opened under.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from functools import cached_property

from pydantic import BaseModel, ConfigDict

from observer.errors import SettingsError
from observer.settings import Settings

#: Bump when the method (not a threshold) changes: the version of every new record changes with it.
RULE_METHOD = "outcomes-1"


class OutcomeRule(BaseModel):
    """The thresholds of the judgement (see the README's "Did it work?" for each one's meaning)."""

    model_config = ConfigDict(frozen=True)

    alpha: float = 0.05
    first_look: int = 10
    looks: int = 5
    min_effect: float = 0.5
    lag_seconds: float = 60
    window_hours: float = 72
    pre_hours: float = 6
    baseline_days: float = 7
    shrink_weight: float = 0.5
    shrink_weight_min: float = 0.2
    shrink_weight_max: float = 0.8
    spike_min_failures: int = 3
    spike_factor: float = 2.0
    reference_min_spikes: int = 3
    reference_quantile: float = 0.25
    cusum_threshold: float = 4.0
    watch_days: float = 7
    recovery_level: float = 0.05
    repeat_min: int = 3
    repeat_days: float = 7
    advice_similarity: float = 0.6
    retention_days: float = 14

    @classmethod
    def from_settings(cls, settings: Settings) -> OutcomeRule:
        """The rule of the `outcomes_*` settings; SettingsError when they contradict each other."""
        rule = cls(**{name: getattr(settings, f"outcomes_{name}") for name in cls.model_fields})
        problem = rule.contradiction()
        if problem is not None:
            raise SettingsError(f"invalid configuration: {problem}")
        return rule

    def contradiction(self) -> str | None:
        """What makes these thresholds unusable together, naming the variables, or None."""
        if not self.shrink_weight_min <= self.shrink_weight <= self.shrink_weight_max:
            return (
                "OBSERVER_OUTCOMES_SHRINK_WEIGHT must lie between OBSERVER_OUTCOMES_SHRINK_WEIGHT_MIN"
                " and OBSERVER_OUTCOMES_SHRINK_WEIGHT_MAX"
            )
        if self.pre_hours >= self.baseline_days * 24:
            return (
                "OBSERVER_OUTCOMES_PRE_HOURS must be shorter than OBSERVER_OUTCOMES_BASELINE_DAYS"
            )
        if self.retention_days * 24 < self.repeat_days * 24 + self.window_hours:
            return (
                "OBSERVER_OUTCOMES_RETENTION_DAYS must cover OBSERVER_OUTCOMES_REPEAT_DAYS plus"
                " OBSERVER_OUTCOMES_WINDOW_HOURS"
            )
        return None

    @cached_property
    def version(self) -> str:
        """`outcomes-1+<digest of the thresholds>`: the same thresholds, the same version."""
        digest = hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]
        return f"{RULE_METHOD}+{digest}"

    # ── planned looks ──

    @property
    def look_exposures(self) -> list[float]:
        """Where the planned looks fall: the first look's exposure, doubled each time."""
        return [float(self.first_look * 2**i) for i in range(self.looks)]

    @property
    def look_alpha(self) -> float:
        """Each planned look's share of the error rate; the window's closing look gets the rest
        (at least one share): Bonferroni over at most `looks + 1` tests, valid however the looks
        fall."""
        return self.alpha / (self.looks + 1)

    @property
    def horizons(self) -> list[float]:
        """Hours after a spike at which the reference decay is measured: the window halved eight
        times, then doubling back up to the whole window (72 h: 0.28, 0.56 … 36, 72)."""
        return [self.window_hours / 2**k for k in range(8, -1, -1)]

    # ── windows ──

    @property
    def lag(self) -> timedelta:
        return timedelta(seconds=self.lag_seconds)

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_hours)

    @property
    def pre(self) -> timedelta:
        return timedelta(hours=self.pre_hours)

    @property
    def baseline(self) -> timedelta:
        """The whole look-back before an intervention: its pre-window and the baseline before it."""
        return timedelta(days=self.baseline_days)

    @property
    def watch(self) -> timedelta:
        return timedelta(days=self.watch_days)

    @property
    def repeat_span(self) -> timedelta:
        return timedelta(days=self.repeat_days)

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)
