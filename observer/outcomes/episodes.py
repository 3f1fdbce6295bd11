"""An episode: one intervention (or a confounded set on one key) judged look by look.

Its post window starts `LAG_SECONDS` after the (last) intervention, so ops already in flight are
not counted, and ends at the next intervention on the key or after `WINDOW_HOURS`. Attempts are
fed in time order (within a call; calls follow arrival); a look is taken the moment the exposure
after reaches a planned look (10, 20, 40 … attempts), so the looks do not depend on how often the
engine runs, and each look is evaluated once and recorded. At a look, with its share α_j of the error rate:

- `worked`: the rate fell below the null ratio (regression to the mean, both guards) × before;
- `worse`: the rate rose above before;
- short of the minimum effect (the rate stayed above MIN_EFFECT × the null ratio × before):
  `not-attributable` if the raw rate did fall, else `did-not-work`;
- otherwise no decision yet (`too-early`). When the window closes undecided, one last look with
  the α not spent: `not-attributable` if the raw rate fell, else `inconclusive`.

After `worked`, a Bernoulli CUSUM watches for the old rate's return (`regressed`) for `WATCH_DAYS`.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import cached_property
from typing import Literal

from pydantic import BaseModel, Field

from observer.outcomes.interventions import Intervention, Key
from observer.outcomes.lookback import Opening, Window
from observer.outcomes.rule import OutcomeRule
from observer.outcomes.stats import (
    BernoulliCusum,
    RateCounts,
    increased_p,
    rate_ratio_interval,
    recovery_run,
    recovery_span,
    reduced_p,
    wilson,
)
from observer.outcomes.view import Verdict

Decision = Literal["worked", "did-not-work", "worse", "inconclusive", "not-attributable"]
TERMINAL: frozenset[str] = frozenset(
    {"worked", "did-not-work", "worse", "inconclusive", "not-attributable"}
)
HOUR = timedelta(hours=1)


class Look(BaseModel):
    """One look at the post window, evaluated once."""

    number: int  # 1 … LOOKS for a planned look; LOOKS + 1 for the closing one
    closing: bool = False
    at: datetime
    after: Window
    alpha: float
    null_ratio: float  # what the rate ratio had to beat at this look
    p_worked: float  # H0: ratio ≥ null ratio
    p_fell: float  # H0: ratio ≥ 1 (the raw rate did not fall)
    p_worse: float  # H0: ratio ≤ 1
    p_short: float  # H0: ratio ≤ MIN_EFFECT × null ratio (the effect is there)
    decision: Decision | None = None


class Recovery(BaseModel):
    """The first run without failures that the rate without an effect makes improbable."""

    needed: float | None = None  # attempts (or hours) in a row without a failure
    after: float | None = None  # the exposure after at which it was reached
    at: datetime | None = None


class Watch(BaseModel):
    """The CUSUM after `worked`, and until when it runs."""

    cusum: BernoulliCusum
    until: datetime


class Episode(BaseModel):
    """One key's judged episode. Mutated only by the engine, in arrival order."""

    id: str
    key: Key
    rule_version: str
    members: list[Intervention]
    opening: Opening
    post_start: datetime
    window_end: datetime
    after: Window = Field(default_factory=Window)  # the whole post window so far
    in_flight: float = 0.0  # exposure between the (last) intervention and the post window
    looks: list[Look] = Field(default_factory=list)
    decision: Decision | None = None
    decided_at: datetime | None = None
    ended: str | None = None  # why the window ended
    recovery: Recovery = Field(default_factory=Recovery)
    since_failure: float = 0.0
    last_failure_at: datetime | None = None
    watch: Watch | None = None
    regressed_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def start(cls, rule: OutcomeRule, intervention: Intervention, opening: Opening) -> Episode:
        episode = cls(
            id=intervention.id,
            key=intervention.key,
            rule_version=rule.version,
            members=[intervention],
            opening=opening,
            post_start=intervention.at + rule.lag,
            window_end=intervention.at + rule.window,
        )
        episode.recovery = Recovery(needed=episode._recovery_needed(rule))
        return episode

    # ── what it is ──

    @cached_property
    def spec(self) -> str:
        """What the episode counts: its key, exposure unit and endpoint (fixed once opened)."""
        return spec_id(self.key, self.opening.unit, self.opening.endpoint)

    @property
    def last_at(self) -> datetime:
        return self.members[-1].at

    @property
    def verdict(self) -> Verdict:
        """The episode's own verdict (a confounded set's joint one)."""
        if self.regressed_at is not None:
            return "regressed"
        return self.decision or "too-early"

    @property
    def watching(self) -> bool:
        return self.watch is not None and self.regressed_at is None

    @property
    def judged_after(self) -> Window:
        """The post window the verdict rests on: up to the deciding look, else so far."""
        return self.looks[-1].after if self.decision is not None else self.after

    @property
    def counts(self) -> RateCounts:
        before = self.opening.before
        return RateCounts(
            before.failures, before.exposure, self.after.failures, self.after.exposure
        )

    @property
    def null_ratio(self) -> float:
        """The null ratio of the last look (the long-run one before any look)."""
        return self.looks[-1].null_ratio if self.looks else self.opening.long_run_null

    @property
    def judged_counts(self) -> RateCounts:
        before, after = self.opening.before, self.judged_after
        return RateCounts(before.failures, before.exposure, after.failures, after.exposure)

    def interval(self, rule: OutcomeRule) -> tuple[float | None, float | None]:
        """The rate ratio's exact interval at 1 − ALPHA, for showing (the verdict uses the look's α)."""
        return rate_ratio_interval(self.judged_counts, 1.0 - rule.alpha)

    # ── what happens to it ──

    def join(self, rule: OutcomeRule, intervention: Intervention) -> None:
        """Another intervention on the key before the first look: one joint episode from now on,
        its post window restarted after the newcomer; no credit is split between them."""
        self.members.append(intervention)
        self.post_start = intervention.at + rule.lag
        self.window_end = intervention.at + rule.window
        self.after = Window()
        self.in_flight = 0.0
        self.since_failure = 0.0
        self.last_failure_at = None
        self.recovery = Recovery(needed=self.recovery.needed)

    def observe(
        self, rule: OutcomeRule, ts: datetime, exposure: float, failed: bool
    ) -> Literal["decided", "regressed"] | None:
        """`exposure` attempts of the key at `ts`, of which only the last may have failed (a run
        folded by `frames.compress`; 0 for a failure when the exposure is hours), in order.

        Returns what changed: a decision, or a regression after `worked`."""
        if ts < self.last_at or self.finished_at is not None:
            return None  # before this episode's time (a late op): its "before" is fixed
        if ts < self.post_start:
            self.in_flight += exposure if self.opening.unit != "hours" else float(failed)
            return None
        if ts < self.window_end:
            if self.decision is None:
                return self._judge(rule, ts, exposure, failed)
            self._count(exposure, failed, ts)  # after `worked`, the window still counts
        return self._watch(ts, exposure, failed)

    def advance(self, rule: OutcomeRule, now: datetime) -> Literal["decided"] | None:
        """Time passing with no op (hours exposure): take the looks that fell due by `now`."""
        if self.opening.unit != "hours" or self.decision is not None or now < self.post_start:
            return None
        return "decided" if self._hours_to(rule, min(now, self.window_end)) else None

    def close(self, rule: OutcomeRule, at: datetime, reason: str) -> bool:
        """End the post window (72 h passed, or the next intervention); True if that decided it."""
        self.ended = self.ended or reason
        self.window_end = min(self.window_end, max(at, self.post_start))
        if self.decision is not None:
            return False
        if self.opening.unit == "hours" and self._hours_to(rule, self.window_end):
            return True
        spent = sum(look.alpha for look in self.looks)
        self._look(rule, at, alpha=rule.alpha - spent, closing=True)
        return True

    def end_watch(self, at: datetime) -> None:
        self.finished_at = self.finished_at or at

    # ── inside ──

    def _judge(
        self, rule: OutcomeRule, ts: datetime, exposure: float, failed: bool
    ) -> Literal["decided"] | None:
        if self.opening.unit == "hours":
            if self._hours_to(rule, ts):
                return "decided"
            if failed:
                self.after.failures += 1
                self._track_recovery(0.0, True, ts)
            return None
        remaining = exposure
        thresholds = rule.look_exposures
        while remaining > 0 and len(self.looks) < len(thresholds):
            step = thresholds[len(self.looks)] - self.after.exposure
            if step > remaining:
                break
            last = step == remaining
            self._count(step, failed and last, ts)
            remaining -= step
            if self._look(rule, ts, alpha=rule.look_alpha):
                if remaining > 0:
                    self._count(remaining, failed, ts)
                    self._watch(ts, remaining, failed)
                return "decided"
        if remaining > 0:
            self._count(remaining, failed, ts)
        return None

    def _count(self, exposure: float, failed: bool, ts: datetime) -> None:
        self.after.exposure += exposure
        self.after.failures += int(failed)
        self._track_recovery(exposure, failed, ts)

    def _hours_to(self, rule: OutcomeRule, ts: datetime) -> bool:
        """Exposure in hours up to `ts`, taking the looks it passes; True once decided."""
        thresholds = rule.look_exposures
        while len(self.looks) < len(thresholds):
            due = self.post_start + thresholds[len(self.looks)] * HOUR
            if due > ts:
                break
            self.after.exposure = thresholds[len(self.looks)]
            self._track_recovery(0.0, False, due)
            if self._look(rule, due, alpha=rule.look_alpha):
                return True
        self.after.exposure = max(self.after.exposure, (ts - self.post_start) / HOUR)
        self._track_recovery(0.0, False, ts)
        return False

    def _look(
        self, rule: OutcomeRule, at: datetime, *, alpha: float, closing: bool = False
    ) -> bool:
        counts = self.counts
        null = self.opening.null_ratio(at - self.post_start, rule, closing=closing)
        look = Look(
            number=len(self.looks) + 1,
            closing=closing,
            at=at,
            after=self.after.model_copy(),
            alpha=alpha,
            null_ratio=null,
            p_worked=reduced_p(counts, null),
            p_fell=reduced_p(counts, 1.0),
            p_worse=increased_p(counts, 1.0),
            p_short=increased_p(counts, null * rule.min_effect),
        )
        fell = look.p_fell <= alpha
        if counts.e_after <= 0:
            look.decision = "inconclusive" if closing else None
        elif look.p_worked <= alpha:
            look.decision = "worked"
        elif look.p_worse <= alpha:
            look.decision = "worse"
        elif look.p_short <= alpha:
            look.decision = "not-attributable" if fell else "did-not-work"
        elif closing:
            look.decision = "not-attributable" if fell else "inconclusive"
        self.looks.append(look)
        if look.decision is None:
            return False
        self.decision, self.decided_at = look.decision, at
        if look.decision == "worked":
            self._start_watch(rule, at)
        elif not closing:
            self.ended = self.ended or f"decided at look {look.number}"
        return True

    def _start_watch(self, rule: OutcomeRule, at: datetime) -> None:
        """A CUSUM per attempt from the rate after (p0) back to the rate without an effect (p1).

        p0 is the upper Wilson bound of the rate after (at most half of p1), so that a rate that
        merely stays where it is does not ring; the threshold is at least CUSUM_THRESHOLD and
        grows with the attempts the watch expects (ln(N / ALPHA)): each restart of the CUSUM rings
        falsely with probability at most e^-h, so the whole watch with probability about ALPHA.
        """
        p1 = self.opening.null_rate
        seen = (self.after.failures + 0.5) / (self.after.exposure + 1.0)
        upper = wilson(self.after.failures, self.after.exposure, 1.0 - rule.alpha)[1]
        p0 = max(seen, min(upper, p1 / 2))
        if self.opening.unit == "hours" or rule.watch_days <= 0 or not 0 < p0 < p1 < 1:
            return
        hours = (at - self.post_start) / HOUR
        pace = self.after.exposure / hours if hours > 0 else self.after.exposure
        expected = pace * rule.watch_days * 24
        h = max(rule.cusum_threshold, math.log(max(expected, 1.0) / rule.alpha))
        self.watch = Watch(cusum=BernoulliCusum(p0=p0, p1=p1, h=h), until=at + rule.watch)

    def _watch(self, ts: datetime, exposure: float, failed: bool) -> Literal["regressed"] | None:
        if not self.watching or self.watch is None or ts >= self.watch.until:
            return None
        if self.watch.cusum.add(round(exposure), failed):
            self.regressed_at = ts
            self.finished_at = ts
            return "regressed"
        return None

    def _track_recovery(self, exposure: float, failed: bool, ts: datetime) -> None:
        recovery = self.recovery
        if recovery.needed is None or recovery.at is not None:
            return
        if self.opening.unit == "hours":
            anchor = self.last_failure_at or self.post_start
            if (ts - anchor) / HOUR >= recovery.needed:
                recovery.at = anchor + recovery.needed * HOUR
                recovery.after = (recovery.at - self.post_start) / HOUR
            if failed:
                self.last_failure_at = ts
            return
        self.since_failure += exposure - (1 if failed else 0)
        if self.since_failure >= recovery.needed:
            recovery.after, recovery.at = self.after.exposure, ts
        if failed:
            self.since_failure = 0.0

    def _recovery_needed(self, rule: OutcomeRule) -> float | None:
        rate = self.opening.null_rate
        if self.opening.unit == "hours":
            return recovery_span(rate, rule.recovery_level)
        return recovery_run(rate, rule.recovery_level)


def spec_id(key: Key, unit: str, endpoint: str | None) -> str:
    return f"{key.id}|{unit}|{endpoint or ''}"
