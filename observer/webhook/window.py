"""The stats window: the last 2000 acknowledged ops, as `/stats` and `/health` show them.

Like the original's in-memory ring, an op counts as soon as it is acknowledged, before ingestion;
unlike it, the window is rebuilt from the durable files at start (the tail of ops.jsonl plus what
the spool holds beyond the ingestion checkpoint), so it survives a restart. Counters are kept
incrementally, so answering costs O(1) whatever the window holds.
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple, Protocol

import orjson

WINDOW_SIZE = 2000


class Fields(Protocol):
    """An op's fields as the window reads them: a dict, or the webhook's decoded event."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


RECENT_SCENARIO_OPS = 10


class WindowEntry(NamedTuple):
    seq: int
    source: str
    success: bool


class StatsWindow:
    """Counts over the last `size` ops, updated one op at a time."""

    def __init__(self, size: int = WINDOW_SIZE) -> None:
        self.size = size
        self._entries: deque[WindowEntry] = deque()
        self._by_source: dict[str, int] = {}
        self._successes = 0
        self._seq = 0
        # The last scenario ops themselves: their summaries are made when /stats asks.
        self._recent_scenario: deque[tuple[int, Fields]] = deque(maxlen=RECENT_SCENARIO_OPS)

    def __len__(self) -> int:
        return len(self._entries)

    def add_line(self, line: bytes) -> None:
        """Count an op from its ops.jsonl line (written by another process, or before a restart)."""
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if isinstance(fields, dict):
            self.add_fields(fields)

    def add_fields(self, fields: Fields) -> None:
        """Count an op from its fields (a dict, or anything that reads like one with `get`)."""
        source = fields.get("source")
        # The original merged 5 and "5" into one key; a key here is always the string form.
        source = "mcp" if source is None else source if type(source) is str else str(source)
        success = fields.get("success") is True
        self._seq += 1
        self._entries.append(WindowEntry(self._seq, source, success))
        by_source = self._by_source
        by_source[source] = by_source.get(source, 0) + 1
        self._successes += success
        if source == "scenario":
            self._recent_scenario.append((self._seq, fields))
        if len(self._entries) > self.size:
            self._evict()

    def stats(self) -> dict[str, Any]:
        total = len(self._entries)
        oldest = self._entries[0].seq if self._entries else self._seq + 1
        return {
            "total": total,
            "successes": self._successes,
            "failures": total - self._successes,
            "by_source": dict(self._by_source),
            "recent_scenario_ops": [
                _scenario_summary(fields) for seq, fields in self._recent_scenario if seq >= oldest
            ],
        }

    def _evict(self) -> None:
        old = self._entries.popleft()
        remaining = self._by_source[old.source] - 1
        if remaining:
            self._by_source[old.source] = remaining
        else:
            del self._by_source[old.source]
        self._successes -= old.success


_SUMMARY_KEYS = (
    ("ts", "timestamp"),
    ("ok", "success"),
    ("staffer", "staffer_id"),
    ("kind", "event_kind"),
    ("role", "role"),
)


_ABSENT = object()


def _scenario_summary(fields: Fields) -> dict[str, Any]:
    """The original's `{ts, ok, staffer, kind, role}`, a key omitted where the op has none."""
    summary = {}
    for out_key, op_key in _SUMMARY_KEYS:
        value = fields.get(op_key, _ABSENT)
        if value is not _ABSENT:
            summary[out_key] = value
    return summary
