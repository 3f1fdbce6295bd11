"""Which of the runs a poll found the worker starts now, which it leaves for later, which it skips.

Pure rules over Prefect's flow-run objects, so they are unit-tested without a server:

- a run is started when it is due, not when it is first seen: the worker looks ahead (prefetch)
  only to know when to wake up next, so it does not take a deployment's concurrency slot, or hold
  an idle process, for seconds before the run's time;
- a late scheduled run whose successor from the same deployment's schedule is already due is
  skipped, so a slow run never leaves a pile of scheduled runs behind it. Runs made by hand (UI,
  CLI, API, triggers) are never skipped: they wait for the deployment's slot and then run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

#: A run this close to its time is started now (the poll itself takes a few milliseconds).
DUE_MARGIN = timedelta(milliseconds=250)


def start_time(run: FlowRun) -> datetime | None:
    """When the run is meant to start: its scheduled state's time, else the expected start."""
    scheduled = run.state.state_details.scheduled_time if run.state else None
    return scheduled or run.next_scheduled_start_time or run.expected_start_time


@dataclass
class Plan:
    start: list[FlowRun] = field(default_factory=list)
    skip: list[tuple[FlowRun, FlowRun]] = field(default_factory=list)  # (late run, its successor)
    wake_at: datetime | None = None


def plan(runs: list[FlowRun], now: datetime) -> Plan:
    """Split the runs of a poll: start those due (but not the superseded), wake up for the rest."""
    result = Plan()
    due: list[FlowRun] = []
    for run in runs:
        when = start_time(run)
        if when is None or when <= now + DUE_MARGIN:
            due.append(run)
        elif result.wake_at is None or when < result.wake_at:
            result.wake_at = when
    result.start, result.skip = _drop_superseded(due)
    return result


def next_in_line(waiting: list[FlowRun]) -> Plan:
    """Of a deployment's runs waiting for its concurrency slot, the one to start now that a slot
    is free (first come, first served), and the late scheduled ones to skip."""
    result = Plan()
    kept, result.skip = _drop_superseded(waiting)
    result.start = kept[:1]
    return result


def _drop_superseded(runs: list[FlowRun]) -> tuple[list[FlowRun], list[tuple[FlowRun, FlowRun]]]:
    """Keep every run made by hand and, per deployment, only the latest scheduled run."""
    latest: dict[object, FlowRun] = {}
    for run in runs:
        if run.auto_scheduled and run.deployment_id is not None:
            best = latest.get(run.deployment_id)
            if best is None or _order(run) > _order(best):
                latest[run.deployment_id] = run
    kept: list[FlowRun] = []
    skipped: list[tuple[FlowRun, FlowRun]] = []
    for run in runs:
        successor = latest.get(run.deployment_id) if run.auto_scheduled else None
        if successor is not None and successor.id != run.id:
            skipped.append((run, successor))
        else:
            kept.append(run)
    return sorted(kept, key=_order), skipped


def skip_message(run: FlowRun, successor: FlowRun) -> str:
    when = start_time(successor)
    due = f" (due {when:%Y-%m-%d %H:%M:%S} UTC)" if when else ""
    return (
        f"Skipped: this scheduled run is late and the schedule's next run, {successor.name!r}{due},"
        " is already due; it runs instead. Runs made by hand are never skipped."
    )


def _order(run: FlowRun) -> tuple[datetime, str]:
    """First come, first served: by the time the run was first meant to start (a run waiting
    for a slot keeps its expected start while its scheduled time moves on)."""
    return (run.expected_start_time or start_time(run) or _EPOCH, str(run.id))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
