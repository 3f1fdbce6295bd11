"""`compact-history`: seal ops.jsonl, commit the sealed segments to the history table, keep it.

Scheduled every 15 minutes (concurrency 1). Every step is idempotent: a cancelled, crashed or
repeated run leaves the table with each op exactly once, and the next run goes on where it
stopped. The first run over an ops.jsonl from before the table existed is a backfill: its
progress shows on the run page.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from observer.catalog import COMPACT_HISTORY
from observer.pipelines.history import CompactParameters, CompactReport, nothing_new
from observer.settings import load_settings
from tasks.history import commit_to_table, keep_the_table, report_history, seal_ops


@flow(name=COMPACT_HISTORY.name, flow_run_name="compact-history ({params.label})")
def compact_history(params: CompactParameters = CompactParameters()) -> CompactReport | State:
    if quiet := nothing_new(load_settings(), params):
        return Completed(message=quiet)  # no task, no artifact: the history stays readable
    report = CompactReport(sealed=seal_ops() if params.seal else None)
    report = commit_to_table(params, report)
    report = keep_the_table(params, report)
    report_history(report)
    return Completed(message=report.summary, data=report)
