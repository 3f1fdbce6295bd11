"""What reports show and what is posted: one record per intervention, and the changes to post.

A record carries the verdict (`confounded` for each member of a joint set, whose own verdict is
`joint.verdict`), the counts before and after as `{attempts, failures}` (or `{hours, failures}` when
exposure is time, flagged), the rate ratio with its exact interval, the null ratio it had to beat
and why, the recovery and the rule's version. A change is a terminal verdict, a regression or an
alert, with a stable id: the poster sends each id once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from observer.outcomes.advice import Alert
from observer.outcomes.episodes import HOUR, Episode
from observer.outcomes.lookback import Window
from observer.outcomes.rule import OutcomeRule
from observer.outcomes.view import (
    Amount,
    InterventionRecord,
    Joint,
    RecoveryRecord,
    Unit,
    Verdict,
    number_text,
    ratio_text,
)
from observer.upstream import LogEntry

LOG_FIELD_CHARS = 500


def amount_of(window: Window, unit: Unit) -> Amount:
    """A window as shown: attempts, or hours when the exposure is time."""
    if unit == "hours":
        return Amount(hours=round(window.exposure, 3), failures=window.failures)
    return Amount(attempts=window.exposure, failures=window.failures)


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
        "before": amount_of(opening.before, unit),
        "after": amount_of(episode.judged_after, unit),
        "baseline": amount_of(opening.baseline, unit),
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
    ratio = ratio_text(record.rate_ratio)
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
            f" {record.watched.fraction()} since it was judged worked on"
            f" {record.after.fraction()} after ({record.exposure}), against"
            f" {record.before.fraction()} before"
        )
    return (
        f"{verdict}{joint}: failures {record.before.fraction()} before,"
        f" {record.after.fraction()} after ({record.exposure}); rate ratio {ratio}"
        f" (interval {number_text(low)}–{number_text(high)}) against a null of"
        f" {record.null_ratio:.2f}{recovered}"
    )


def _last_known(values: list[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def _key(record: InterventionRecord) -> str:
    return ",".join(f"{k}={v}" for k, v in record.key.items())


def _cut(text: str) -> str:
    return text[:LOG_FIELD_CHARS]
