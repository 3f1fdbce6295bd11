"""What a run leaves on its Prefect run page: each pipeline's report renders its own artifacts.

A report says what its artifacts are (`artifacts()`); `tasks/publish.py` hands them to Prefect. The
keys are stable, so the Artifacts page shows each one's latest version and its history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


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
