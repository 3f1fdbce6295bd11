"""The stats window: the last 2000 acknowledged ops, as `/stats` and `/health` show them.

Like the original's in-memory ring, an op counts as soon as it is acknowledged, before ingestion;
unlike it, the window is rebuilt from the durable files at start (the tail of ops.jsonl plus what
the spool holds beyond the ingestion checkpoint), so it survives a restart. Counters are kept
incrementally, so answering costs O(1) whatever the window holds. Ops are counted in bulk: adding
them only queues them (one list extend on the request path), and they are counted when the stats
are read or `COUNT_EVERY` have queued; a run of like ops (the usual case) is counted in one step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from operator import attrgetter
from typing import Any, Protocol

import orjson

WINDOW_SIZE = 2000
RECENT_SCENARIO_OPS = 10
#: Ops queued before they are counted anyway (what the queue holds at most).
COUNT_EVERY = 256
_SOURCE, _SUCCESS = attrgetter("source"), attrgetter("success")


class Fields(Protocol):
    """An op's fields as the window reads them: a dict, or the webhook's decoded event (whose
    `source` and `success` attributes are already a string and a boolean)."""

    def get(self, key: str, default: Any = None, /) -> Any: ...


class StatsWindow:
    """Counts over the last `size` ops.

    The ops themselves are not kept, only runs of consecutive ops with the same source and outcome
    (`[source, success, count]`, oldest first): a batch of like ops is one run, added and evicted
    in one step.
    """

    def __init__(self, size: int = WINDOW_SIZE) -> None:
        self.size = size
        self._runs: deque[list[Any]] = deque()
        self._total = 0
        self._by_source: dict[str, int] = {}
        self._successes = 0
        self._added = 0  # ops counted since start: the sequence number of the last one
        # The last scenario ops themselves: their summaries are made when /stats asks.
        self._recent_scenario: deque[tuple[int, Fields]] = deque(maxlen=RECENT_SCENARIO_OPS)
        self._queued: list[Fields] = []  # added, not counted yet

    def __len__(self) -> int:
        return min(self._total + len(self._queued), self.size)

    def add_line(self, line: bytes) -> None:
        """Count an op from its ops.jsonl line (written by another process, or before a restart)."""
        try:
            fields = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if isinstance(fields, dict):
            self.add_ops((fields,))

    def add_fields(self, fields: Fields) -> None:
        """Add one op."""
        self.add_ops((fields,))

    def add_ops(self, ops: Sequence[Fields]) -> None:
        """Add ops in the order given (counted with the next stats, or once enough queue)."""
        queued = self._queued
        queued += ops
        if len(queued) >= COUNT_EVERY:
            self._count()

    def _count(self) -> None:
        """Count the queued ops, in order."""
        ops, self._queued = self._queued, []
        try:  # the webhook's decoded events: a string and a boolean already
            sources: list[str] = list(map(_SOURCE, ops))
            outcomes: list[bool] = list(map(_SUCCESS, ops))
        except AttributeError:  # dicts of fields among them
            sources = [_source(op) if type(op) is dict else op.source for op in ops]  # type: ignore[attr-defined]
            outcomes = [op.get("success") is True if type(op) is dict else op.success for op in ops]  # type: ignore[attr-defined]
        count = len(sources)
        if not count:
            return
        first, last = sources[0], outcomes[0]
        if sources.count(first) == count and outcomes.count(last) == count:
            self._add_run(first, last, count)
        else:
            for source, success in zip(sources, outcomes, strict=True):
                self._add_run(source, success, 1)
        self._recent(ops, sources)
        overflow = self._total - self.size
        if overflow > 0:
            self._evict(overflow)

    def _add_run(self, source: str, success: bool, count: int) -> None:
        runs = self._runs
        if runs and runs[-1][0] == source and runs[-1][1] is success:
            runs[-1][2] += count
        else:
            runs.append([source, success, count])
        self._total += count
        self._added += count
        self._by_source[source] = self._by_source.get(source, 0) + count
        if success:
            self._successes += count

    def _recent(self, ops: Sequence[Fields], sources: list[str]) -> None:
        """Keep the last scenario ops of these (only the last few can ever be shown)."""
        first = self._added - len(ops) + 1
        found = []
        for index in range(len(ops) - 1, -1, -1):
            if sources[index] == "scenario":
                found.append((first + index, ops[index]))
                if len(found) == RECENT_SCENARIO_OPS:
                    break
        self._recent_scenario.extend(reversed(found))

    def stats(self) -> dict[str, Any]:
        self._count()
        total = self._total
        oldest = self._added - total + 1
        return {
            "total": total,
            "successes": self._successes,
            "failures": total - self._successes,
            "by_source": dict(self._by_source),
            "recent_scenario_ops": [
                _scenario_summary(fields) for seq, fields in self._recent_scenario if seq >= oldest
            ],
        }

    def _evict(self, count: int) -> None:
        """Forget the oldest `count` ops."""
        runs, by_source = self._runs, self._by_source
        while count:
            run = runs[0]
            source, success, size = run
            gone = min(size, count)
            if gone == size:
                runs.popleft()
            else:
                run[2] = size - gone
            count -= gone
            self._total -= gone
            if success:
                self._successes -= gone
            left = by_source[source] - gone
            if left:
                by_source[source] = left
            else:
                del by_source[source]


def _source(fields: dict[str, Any]) -> str:
    source = fields.get("source")
    # The original merged 5 and "5" into one key; a key here is always the string form.
    return "mcp" if source is None else source if type(source) is str else str(source)


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
