"""What a run leaves on its Prefect run page: each pipeline's report renders its own artifacts.

A report says what its artifacts are (`artifacts()`); `tasks/publish.py` hands them to Prefect. The
keys are stable, so the Artifacts page shows each one's latest version and its history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel


@dataclass(frozen=True)
class Artifact:
    """One keyed artifact: a table (rows) or a markdown text, with its one-line description.

    The description is plain text (it may hold outside text: a run's reason, an error); the UIs
    render it as markdown, so it is published escaped. The markdown is the report's own, built
    with `observer.markdown` around every outside text."""

    key: str
    description: str
    table: list[dict[str, Any]] | None = None
    markdown: str | None = None


class RunReport(Protocol):
    """A pipeline's run report: it knows which artifacts show it."""

    def artifacts(self) -> list[Artifact]: ...


def measures(values: dict[str, Any]) -> list[dict[str, Any]]:
    """A flat report as (measure, value) rows, the shape of the counting runs' tables."""
    return [{"measure": name, "value": value} for name, value in values.items()]


class CountingReport(BaseModel):
    """A run that reads records in batches: what each such run counts, and its counts as a table
    of (measure, value) rows, a breakdown (`by`) and what happened (`notes`) last."""

    batches: int = 0
    bytes_read: int = 0
    seconds: float = 0.0

    def rows(
        self, by: str, prefix: str, notes: Iterable[str] = (), exclude: set[str] | None = None
    ) -> list[dict[str, Any]]:
        breakdown: dict[str, int] = getattr(self, by)
        rows = measures(self.model_dump(exclude={by, *(exclude or ())}))
        rows += measures({f"{prefix}:{name}": n for name, n in sorted(breakdown.items())})
        return rows + [{"measure": "event", "value": text} for text in notes]
