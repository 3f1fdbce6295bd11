"""The verdicts as everyone else reads them: a record per intervention, one per alert, and the
document that `observer outcomes` prints (`state/outcomes.json`, replaced by each assess-outcomes
run).

Plain pydantic and the standard library, no polars: `observer outcomes` reads it in a light
process, and analyze-errors and consolidate-playbooks read it to say, in what they post, how their
earlier advice on the same key fared (`OutcomesView.outcomes_of`).
"""

from __future__ import annotations

import collections
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from observer.files import write_atomic

Kind = Literal["correction", "diagnosis", "playbook"]
Unit = Literal["attempts", "endpoint-attempts", "hours"]
Verdict = Literal[
    "too-early",
    "worked",
    "did-not-work",
    "worse",
    "inconclusive",
    "not-attributable",
    "confounded",
    "regressed",
]
#: The order verdicts are counted in (`too-early` is no outcome yet, and never counted).
COUNTED: tuple[Verdict, ...] = (
    "worked",
    "regressed",
    "did-not-work",
    "worse",
    "not-attributable",
    "inconclusive",
    "confounded",
)


class Amount(BaseModel):
    """A window as shown: attempts, or hours when the exposure is time."""

    attempts: float | None = None
    hours: float | None = None
    failures: int

    def fraction(self) -> str:
        """`3/40`, or `3 in 6 h` when the exposure is time."""
        if self.hours is not None:
            return f"{self.failures} in {self.hours:g} h"
        return f"{self.failures}/{self.attempts or 0:g}"


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

    @property
    def outcome(self) -> Verdict:
        """The verdict that counts for this intervention: its set's, when it is one of several."""
        return self.joint.verdict if self.joint is not None else self.verdict

    def cells(self) -> dict[str, Any]:
        """The record as one flat table row."""
        return {
            "kind": self.kind,
            "key": key_text(self.key),
            "at": self.at.isoformat(),
            "verdict": self.verdict if self.joint is None else f"confounded ({self.joint.verdict})",
            "before": self.before.fraction(),
            "after": self.after.fraction(),
            "rate_ratio": ratio_text(self.rate_ratio),
            "interval": f"{number_text(self.interval[0])}–{number_text(self.interval[1])}",
            "null_ratio": number_text(self.null_ratio),
            "recovery_h": "censored"
            if self.recovery.censored
            else number_text(self.recovery.hours),
            "exposure": self.exposure,
            "rule": self.rule_version,
        }


class CoveredIntervention(BaseModel):
    id: str
    at: datetime
    verdict: str


class AlertRecord(BaseModel):
    """Repeated advice without effect, as shown and printed."""

    kind: Literal["repeated-advice"] = "repeated-advice"
    id: str
    at: datetime
    advice: str
    key: dict[str, str]
    interventions: list[CoveredIntervention]
    before: Amount  # pooled over the episodes decided in the span
    after: Amount
    rate_ratio: float | None  # Mantel–Haenszel, after/before
    p_not_the_fix: float
    message: str
    rule_version: str


class Tally(collections.Counter[str]):
    """Verdicts counted: `2 worked, 1 did-not-work` (empty when nothing was decided yet)."""

    def __str__(self) -> str:
        return ", ".join(f"{self[v]} {v}" for v in COUNTED if self[v])


class OutcomesView(BaseModel):
    """Every intervention the judging keeps (open, and finished ones for RETENTION_DAYS) with its
    verdict, and the alerts, as the last assess-outcomes run left them."""

    updated_at: datetime | None = None
    rule_version: str | None = None
    interventions: list[InterventionRecord] = Field(default_factory=list)
    alerts: list[AlertRecord] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> OutcomesView:
        """The last run's view; an empty one when there is none yet, or when the file is not one
        (a view is only ever shown: the next run replaces it)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (FileNotFoundError, ValidationError):
            return cls()

    def save(self, path: Path) -> None:
        write_atomic(path, self.model_dump_json().encode() + b"\n")

    def document(self) -> dict[str, list[dict[str, Any]]]:
        """What `observer outcomes --json` prints: `{"interventions": [...], "alerts": [...]}`."""
        return {
            "interventions": [r.model_dump(mode="json") for r in self.interventions],
            "alerts": [a.model_dump(mode="json") for a in self.alerts],
        }

    def outcomes_of(self, kind: Kind, **key: str) -> Tally:
        """The verdicts of the interventions of `kind` on the key named (e.g. `endpoint=…,
        pattern=…` for a failure group's diagnoses), too-early ones left out."""
        tally = Tally()
        for record in self.interventions:
            if record.kind != kind or record.verdict == "too-early":
                continue
            if all(record.key.get(name) == value for name, value in key.items()):
                tally[record.verdict] += 1
        return tally


def key_text(key: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in key.items())


def ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def number_text(value: float | None) -> str:
    return "∞" if value is None else f"{value:.3g}"
