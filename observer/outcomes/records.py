"""What reports show and what is posted: one record per intervention, and the changes to post.

A record carries the verdict (`confounded` for each member of a joint set, whose own verdict is
`joint.verdict`), the counts before and after as `{attempts, failures}` (or `{hours, failures}` when
exposure is time, flagged), the rate ratio with its exact interval, the null ratio it had to beat
and why, the recovery and the rule's version. A change is a terminal verdict, a regression or an
alert, with a stable id: the poster sends each id once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from observer.outcomes.advice import Alert
from observer.outcomes.episodes import HOUR, Episode, Verdict
from observer.outcomes.interventions import Kind
from observer.outcomes.lookback import Unit, Window
from observer.outcomes.rule import OutcomeRule
from observer.upstream import LogEntry

LOG_FIELD_CHARS = 500


class Amount(BaseModel):
    """A window as shown: attempts, or hours when the exposure is time."""

    attempts: float | None = None
    hours: float | None = None
    failures: int

    @classmethod
    def of(cls, window: Window, unit: Unit) -> Amount:
        if unit == "hours":
            return cls(hours=round(window.exposure, 3), failures=window.failures)
        return cls(attempts=window.exposure, failures=window.failures)


class RecoveryRecord(BaseModel):
    needed: float | None  # attempts (or hours) in a row without a failure
    attempts: float | None  # exposure after at which it was reached (hours when time)
    hours: float | None  # hours from the intervention to recovery
    censored: bool  # not (yet) recovered


class Joint(BaseModel):
    verdict: Verdict
    members: list[str]


class InterventionRecord(BaseModel):
    """One intervention and what became of it."""

    id: str
    kind: Kind
    key: dict[str, str]
    at: datetime
    advice: str
    verdict: Verdict
    joint: Joint | None
    exposure: Unit
    flagged: str | None  # why this verdict deserves caution (hours as exposure, …)
    before: Amount
    after: Amount
    baseline: Amount
    rate_ratio: float | None
    interval: tuple[float | None, float | None]
    null_ratio: float
    prior_weight: float
    reference_spikes: int
    reference_decay: float | None
    in_flight: float
    looks: int
    decided_at: datetime | None
    window_end: datetime
    ended: str | None
    recovery: RecoveryRecord
    regressed_at: datetime | None
    watched: Amount | None  # after `worked`: what the watch saw (attempts, failures)
    rule_version: str

    def cells(self) -> dict[str, Any]:
        """The record as one flat table row."""
        return {
            "kind": self.kind,
            "key": ", ".join(f"{k}={v}" for k, v in self.key.items()),
            "at": self.at.isoformat(),
            "verdict": self.verdict if self.joint is None else f"confounded ({self.joint.verdict})",
            "before": _fraction(self.before),
            "after": _fraction(self.after),
            "rate_ratio": _ratio(self.rate_ratio),
            "interval": f"{_number(self.interval[0])}–{_number(self.interval[1])}",
            "null_ratio": _number(self.null_ratio),
            "recovery_h": "censored" if self.recovery.censored else _number(self.recovery.hours),
            "exposure": self.exposure,
            "rule": self.rule_version,
        }


def records_of(episode: Episode, rule: OutcomeRule) -> list[InterventionRecord]:
    """One record per member of the episode."""
    opening, unit = episode.opening, episode.opening.unit
    joint = (
        Joint(verdict=episode.verdict, members=[m.id for m in episode.members])
        if len(episode.members) > 1
        else None
    )
    recovery = episode.recovery
    shared = {
        "exposure": unit,
        "flagged": (
            "exposure is hours: the key had no op before the intervention, so a drop in"
            " traffic would look like a fix"
            if unit == "hours"
            else None
        ),
        "before": Amount.of(opening.before, unit),
        "after": Amount.of(episode.judged_after, unit),
        "baseline": Amount.of(opening.baseline, unit),
        "rate_ratio": episode.judged_counts.rate_ratio,
        "interval": episode.interval(rule),
        "null_ratio": episode.null_ratio,
        "prior_weight": opening.prior_weight,
        "reference_spikes": opening.reference.spikes,
        "reference_decay": _last_known(opening.reference.decay),
        "in_flight": episode.in_flight,
        "looks": len(episode.looks),
        "decided_at": episode.decided_at,
        "window_end": episode.window_end,
        "ended": episode.ended,
        "regressed_at": episode.regressed_at,
        "watched": (
            Amount(attempts=episode.watch.cusum.attempts, failures=episode.watch.cusum.failures)
            if episode.watch is not None
            else None
        ),
        "rule_version": episode.rule_version,
    }
    key = episode.key.describe()
    if opening.endpoint is not None:
        key.setdefault("endpoint", opening.endpoint)
    return [
        InterventionRecord(
            id=member.id,
            kind=member.kind,
            key=key | ({"task_class": member.task_class} if member.task_class else {}),
            at=member.at,
            advice=member.advice,
            verdict="confounded" if joint is not None else episode.verdict,
            joint=joint,
            recovery=RecoveryRecord(
                needed=recovery.needed,
                attempts=recovery.after,
                hours=(recovery.at - member.at) / HOUR if recovery.at is not None else None,
                censored=recovery.at is None,
            ),
            **shared,
        )
        for member in episode.members
    ]


class Change(BaseModel):
    """Something to post: a terminal verdict, a regression or an alert; `id` is posted once."""

    id: str
    kind: Literal["verdict", "regressed", "alert"]
    verdict: Verdict | None = None  # the (joint) verdict of a verdict or regression
    at: datetime
    rule_version: str
    summary: str
    interventions: list[InterventionRecord] = Field(default_factory=list)
    alert: Alert | None = None

    def log_entry(self) -> LogEntry:
        """The change as the gateway's `/log` body (the original's four keys)."""
        if self.alert is not None:
            alert = self.alert
            return LogEntry(
                operation=f"outcome: repeated advice without effect ({len(alert.interventions)})",
                approach=_cut(alert.advice),
                result=_cut(alert.message),
                context=_cut(f"key={alert.key}; alert={alert.id}; rule={self.rule_version}"),
            )
        first = self.interventions[0]
        ids = ",".join(r.id for r in self.interventions)
        return LogEntry(
            operation=f"outcome: {first.kind} {self.verdict}",
            approach=_cut(first.advice),
            result=_cut(self.summary),
            context=_cut(f"key={_key(first)}; interventions={ids}; rule={self.rule_version}"),
        )


def verdict_change(episode: Episode, rule: OutcomeRule) -> Change:
    """The change a terminal verdict (or a regression) of the episode makes."""
    records = records_of(episode, rule)
    regressed = episode.regressed_at is not None
    return Change(
        id=f"{episode.id}:{episode.verdict}",
        kind="regressed" if regressed else "verdict",
        verdict=episode.verdict,
        at=episode.regressed_at or episode.decided_at or episode.last_at,
        rule_version=episode.rule_version,
        summary=describe(records[0]),
        interventions=records,
    )


def alert_change(alert: Alert) -> Change:
    return Change(
        id=alert.id,
        kind="alert",
        at=alert.at,
        rule_version=alert.rule_version,
        summary=alert.message,
        alert=alert,
    )


def describe(record: InterventionRecord) -> str:
    """One plain sentence: the verdict, the counts, the ratio against its null, the recovery."""
    verdict = record.joint.verdict if record.joint is not None else record.verdict
    joint = (
        f" (jointly, {len(record.joint.members)} interventions on the key before the first look;"
        " no credit split)"
        if record.joint is not None
        else ""
    )
    ratio = _ratio(record.rate_ratio)
    low, high = record.interval
    recovered = (
        f"; recovered after {record.recovery.hours:.1f} h"
        if record.recovery.hours is not None
        else ""
    )
    if verdict == "regressed" and record.watched is not None and record.regressed_at is not None:
        since = (record.regressed_at - record.at) / timedelta(hours=1)
        return (
            f"regressed{joint}: {since:.1f} h after it, failures are back:"
            f" {_fraction(record.watched)} since it was judged worked on"
            f" {_fraction(record.after)} after ({record.exposure}), against"
            f" {_fraction(record.before)} before"
        )
    return (
        f"{verdict}{joint}: failures {_fraction(record.before)} before,"
        f" {_fraction(record.after)} after ({record.exposure}); rate ratio {ratio}"
        f" (interval {_number(low)}–{_number(high)}) against a null of"
        f" {record.null_ratio:.2f}{recovered}"
    )


def _fraction(amount: Amount) -> str:
    if amount.hours is not None:
        return f"{amount.failures} in {amount.hours:g} h"
    return f"{amount.failures}/{amount.attempts:g}"


def _last_known(values: list[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _number(value: float | None) -> str:
    return "∞" if value is None else f"{value:.3g}"


def _key(record: InterventionRecord) -> str:
    return ",".join(f"{k}={v}" for k, v in record.key.items())


def _cut(text: str) -> str:
    return text[:LOG_FIELD_CHARS]
