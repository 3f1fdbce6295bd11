"""What a run leaves on its Prefect run page: each pipeline's report renders its own artifacts.

A report says what its artifacts are (`artifacts()`); `tasks/publish.py` hands them to Prefect. The
keys are stable, so the Artifacts page shows each one's latest version and its history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel

from observer.errors import NotDelivered


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


class Deliveries:
    """What a report whose posts may fail says about them. Its `status` maps each item to what
    became of it (`posted`, `failed: …`, `not attempted: …`, or a decision), its `gateway_down`
    whether a post failed as a gateway that is down does; ITEMS names the items (`change(s)`),
    THEN what becomes of those not delivered."""

    ITEMS: ClassVar[str]
    THEN: ClassVar[str]
    if TYPE_CHECKING:  # the model's own fields (declared here, pydantic would add them first)
        status: dict[str, str]
        gateway_down: bool

    def count(self, prefix: str) -> int:
        return sum(1 for value in self.status.values() if value.startswith(prefix))

    def raise_for_delivery(self) -> None:
        """Raise `NotDelivered` when an item did not reach the gateway. Called after the
        artifacts, so the run page shows them."""
        failed = self.count("failed")
        if failed:
            raise NotDelivered(
                f"{failed} {self.ITEMS} not delivered, {self.count('not attempted')} not"
                f" attempted; {self.THEN}",
                gateway_down=self.gateway_down,
            )
