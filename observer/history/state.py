"""What this host's compact-history runs last did to the table (`state/compact-history.json`),
readable without polars or deltalake: `observer status` and the runs' first-step check read it."""

from __future__ import annotations

from pydantic import BaseModel, Field


class HistoryState(BaseModel):
    last_upkeep_at: str | None = None
    vacuumed: list[str] = Field(default_factory=list)  # files the log still names, all deleted
    stream: str = ""
    committed: int = 0  # the stream position the table held this stream's ops up to, last run

    def committed_of(self, stream: str) -> int:
        """How far `stream` is in the table, as the last run left it (0: not known)."""
        return self.committed if self.stream == stream else 0
