"""How far a long step got: a tracker a pipeline feeds, which decides when it is worth saying.

Pipelines stay plain functions. One that can run long takes an optional `on_progress` callback,
and, once it knows how much there is to do (and only when that is a lot), makes a `Progress`:

    def backfill(settings: Settings, *, on_progress: ProgressReport | None = None) -> Report:
        total = bytes_to_read(settings)
        progress = Progress.maybe("history backfill", total, on_progress, above=64 * 2**20)
        for batch in batches(settings):
            ...
            progress.update(done_bytes, note=f"{rows} row(s)")
        progress.finish()

`Progress.maybe` returns a tracker that reports nothing when there is no callback or the total is
below `above`, so the loop reads the same either way. The tracker reports its start (0%), then
at most every `every_seconds` (2 s) and only for at least `every_fraction` (1%) more, or after
`heartbeat_seconds` (30 s) of slower progress, and its end: about 100 reports for a run of any
length (plus one per 30 s of a crawl), each one a database write and an event in Prefect. Each report (`ProgressUpdate`) says
how far, the rate and the time left, as numbers and as one log line. On Prefect, `tasks/progress.py`
turns the reports into a progress artifact (the ring on the task in the run graph) and log lines;
in a test or a script, any callable will do. The total may grow as it goes (a spool being written
while it drains): pass `total=` to `update`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from observer.charts.figure import short

Unit = Literal["bytes", "rows", "ops"]


@dataclass(frozen=True)
class ProgressUpdate:
    """One report: `done` of `total` `unit` after `elapsed` seconds; `final` at the end."""

    what: str
    done: int
    total: int
    unit: Unit
    elapsed: float
    final: bool = False
    note: str = ""

    @property
    def percent(self) -> float:
        """0 to 100 (a total of 0 is done)."""
        return 100.0 if self.total <= 0 else min(100.0, 100.0 * self.done / self.total)

    @property
    def rate(self) -> float | None:
        """Units per second so far (None before anything is done)."""
        return self.done / self.elapsed if self.elapsed > 0 and self.done > 0 else None

    @property
    def seconds_left(self) -> float | None:
        rate = self.rate
        if self.final or not rate:
            return None
        return max(0, self.total - self.done) / rate

    def line(self) -> str:
        """`spool drain: 96 MB of 240 MB (40.0%), 31 MB/s, about 5 s left; 410000 op(s)`."""
        head = (
            f"{self.what}: {_amount(self.done, self.unit)} of {_amount(self.total, self.unit)}"
            f" ({self.percent:.1f}%)"
        )
        parts = [head]
        if self.rate is not None:
            parts.append(f"{_amount(self.rate, self.unit)}/s")
        if self.final:
            parts.append(f"done in {_duration(self.elapsed)}")
        elif (left := self.seconds_left) is not None:
            parts.append(f"about {_duration(left)} left")
        text = ", ".join(parts)
        return f"{text}; {self.note}" if self.note else text


class ProgressReport(Protocol):
    """Where the reports go: a callable taking one `ProgressUpdate`."""

    def __call__(self, update: ProgressUpdate) -> None: ...


class Progress:
    """The tracker: `update(done)` as the work goes, `finish()` at its end (see the module)."""

    def __init__(
        self,
        what: str,
        total: int,
        report: ProgressReport | None,
        *,
        unit: Unit = "bytes",
        every_seconds: float = 2.0,
        every_fraction: float = 0.01,
        heartbeat_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit = what, max(0, total), unit
        self._report = report
        self._every_seconds = every_seconds
        self._every_fraction = every_fraction
        self._heartbeat_seconds = heartbeat_seconds
        self._clock = clock
        self._started = clock()
        self.done = 0
        self.note = ""
        self._said_at = self._started
        self._said_done = 0
        self._finished = False
        self._say(final=False)

    @classmethod
    def maybe(
        cls,
        what: str,
        total: int,
        report: ProgressReport | None,
        *,
        above: int,
        unit: Unit = "bytes",
    ) -> Progress:
        """A tracker that reports only when there is a `report` and `total` reaches `above`."""
        return cls(what, total, report if total >= above else None, unit=unit)

    @property
    def reporting(self) -> bool:
        return self._report is not None

    def update(self, done: int, *, total: int | None = None, note: str = "") -> None:
        """`done` units of the work are done (a running count, not an increment)."""
        self.done = done
        if total is not None:
            self.total = max(0, total)
        self.total = max(self.total, done)
        if note:
            self.note = note
        if done >= self.total:
            return  # all done: `finish()` says so
        now = self._clock()
        since = now - self._said_at
        step = self._every_fraction * self.total
        if since >= self._every_seconds and (
            done - self._said_done >= step or since >= self._heartbeat_seconds
        ):
            self._say(final=False, now=now)

    def finish(self) -> None:
        """The work ended: report where it stopped, once (100% when everything was done)."""
        if not self._finished:
            self._finished = True
            self._say(final=True)

    def _say(self, *, final: bool, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        self._said_at, self._said_done = now, self.done
        if self._report is not None:
            self._report(
                ProgressUpdate(
                    what=self.what,
                    done=self.done,
                    total=self.total,
                    unit=self.unit,
                    elapsed=now - self._started,
                    final=final,
                    note=self.note,
                )
            )


def _amount(value: float, unit: Unit) -> str:
    if unit == "bytes":
        return short(value, "bytes")
    return f"{value:,.0f} {unit}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, second = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {second} s"
    hours, minute = divmod(minutes, 60)
    return f"{hours} h {minute} min"
