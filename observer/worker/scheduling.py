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

from collections import defaultdict
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


def plan(runs: list[FlowRun], now: datetime, *, waiting: set[str] | None = None) -> Plan:
    """Split the runs of a poll. `waiting` names runs to start whatever their time (runs that
    waited for a slot the worker has just seen freed)."""
    waiting = waiting or set()
    result = Plan()
    due: list[FlowRun] = []
    for run in runs:
        when = start_time(run)
        if str(run.id) in waiting or when is None or when <= now + DUE_MARGIN:
            due.append(run)
        elif result.wake_at is None or when < result.wake_at:
            result.wake_at = when
    latest_scheduled: dict[object, FlowRun] = {}
    by_deployment: dict[object, list[FlowRun]] = defaultdict(list)
    for run in due:
        if run.auto_scheduled and run.deployment_id is not None:
            by_deployment[run.deployment_id].append(run)
    for deployment_id, scheduled in by_deployment.items():
        latest_scheduled[deployment_id] = max(scheduled, key=_order)
    for run in due:
        successor = latest_scheduled.get(run.deployment_id) if run.auto_scheduled else None
        if successor is not None and successor.id != run.id:
            result.skip.append((run, successor))
        else:
            result.start.append(run)
    result.start.sort(key=_order)
    return result


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
