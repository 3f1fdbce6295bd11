"""`tail-corrections`: record new rows of the overseer's corrections file as ops.

Scheduled every cycle, concurrency 1. Each run resumes from its on-disk checkpoint, so runs can be
cancelled, retried or repeated without losing or doubling a row.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from observer.catalog import TAIL_CORRECTIONS
from observer.pipelines.corrections import TailParameters, TailReport, nothing_new
from observer.settings import load_settings
from tasks.corrections import announce_spool, report_tailing, tail_corrections_file


@flow(name=TAIL_CORRECTIONS.name, flow_run_name="tail-corrections ({params.label})")
def tail_corrections(params: TailParameters = TailParameters()) -> TailReport | State:
    if quiet := nothing_new(load_settings(), params):
        return Completed(message=quiet)  # no task, no artifact: the history stays readable
    report = tail_corrections_file(params.from_offset, params.grace_seconds, params.max_bytes)
    if report.recorded:
        announce_spool(report.recorded)
    report_tailing(report)
    return report
