"""Interventions and their keys: what was done, when, to what.

- A **correction** is an overseer correction op (`source = overseer_correction`): its key is its
  `sig_hash`, else its `task_class` (a correction with neither names nothing to judge).
- A **diagnosis** is an analysis Observer posted for a failure group: its key is the group (endpoint
  + normalised error, `observer.pipelines.grouping`).
- A **playbook** entry is posted for an endpoint: its key is the endpoint.

Outcomes are the key's other ops. Correction ops are never attempts or successes (they are written
with `success = true`), whatever their key.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

import polars as pl
from pydantic import AwareDatetime, BaseModel, ConfigDict, field_validator

from observer.outcomes.frames import CORRECTION_SOURCE
from observer.outcomes.view import Kind
from observer.pipelines.grouping import clean_cut, signature

KeyField = Literal["sig_hash", "task_class", "group", "endpoint"]

#: Advice text kept in a record (the whole text is never needed to judge or to show it).
ADVICE_CHARS = 1000


class Key(BaseModel):
    """What an intervention acts on. `endpoint` is known up front for groups and endpoints; for a
    signature or a task class it is found in the key's ops when its episode opens."""

    model_config = ConfigDict(frozen=True)

    field: KeyField
    value: str
    endpoint: str | None = None
    pattern: str | None = None  # a group's normalised error

    @property
    def id(self) -> str:
        return f"{self.field}:{self.value}"

    def describe(self) -> dict[str, str]:
        """The key as reports name it: `sig_hash`, `task_class`, `endpoint` (and `pattern`) as known."""
        named: dict[str, str] = {}
        if self.field in ("sig_hash", "task_class"):
            named[self.field] = self.value
        if self.endpoint is not None:
            named["endpoint"] = self.endpoint
        if self.pattern is not None:
            named["pattern"] = self.pattern
        return named

    def __str__(self) -> str:
        if self.field == "group":
            return f"group {self.endpoint}: {self.pattern}"
        return f"{self.field} {self.value}"


class Intervention(BaseModel):
    """One correction, diagnosis or playbook entry; `id` is stable across runs (its dedup key)."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: Kind
    at: AwareDatetime
    key: Key
    advice: str
    task_class: str | None = None  # a correction's, when it names both a signature and a class

    @field_validator("at")
    @classmethod
    def _in_utc(cls, at: datetime) -> datetime:
        return at.astimezone(UTC)

    @classmethod
    def diagnosis(cls, at: datetime, endpoint: str, pattern: str, text: str) -> Intervention:
        """A diagnosis posted for the failure group (endpoint, normalised error pattern)."""
        group = signature(endpoint, pattern)
        key = Key(field="group", value=group, endpoint=endpoint, pattern=pattern)
        return cls(
            id=f"diagnosis:{group}:{_stamp(at)}",
            kind="diagnosis",
            at=at,
            key=key,
            advice=clean_cut(text, ADVICE_CHARS),
        )

    @classmethod
    def playbook(cls, at: datetime, endpoint: str, text: str) -> Intervention:
        """A playbook entry posted for an endpoint."""
        tag = hashlib.sha256(endpoint.encode()).hexdigest()[:16]
        return cls(
            id=f"playbook:{tag}:{_stamp(at)}",
            kind="playbook",
            at=at,
            key=Key(field="endpoint", value=endpoint, endpoint=endpoint),
            advice=clean_cut(text, ADVICE_CHARS),
        )


def _stamp(at: datetime) -> str:
    return at.strftime("%Y%m%dT%H%M%S.%fZ")


def corrections_in(ops: pl.DataFrame) -> tuple[list[Intervention], int]:
    """The corrections among conformed ops, and how many correction ops could not be judged
    (no timestamp, or neither `sig_hash` nor `task_class`)."""
    rows = ops.filter(pl.col("source") == CORRECTION_SOURCE)
    found: list[Intervention] = []
    for row in rows.iter_rows(named=True):
        sig_hash, task_class = row["sig_hash"] or None, row["task_class"] or None
        if row["ts"] is None or (sig_hash is None and task_class is None):
            continue
        key = Key(field="sig_hash", value=sig_hash) if sig_hash else None
        key = key or Key(field="task_class", value=task_class or "")
        found.append(
            Intervention(
                id=f"correction:{row['pos']}",
                kind="correction",
                at=row["ts"],
                key=key,
                advice=clean_cut(row["correction"] or row["output_summary"] or "", ADVICE_CHARS),
                task_class=task_class,
            )
        )
    return found, rows.height - len(found)
