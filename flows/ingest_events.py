"""`ingest-events`: moves acknowledged events from the durable spool into ops.jsonl.

Runs when the webhook signals new records (a Prefect event and deployment trigger) and on a safety
schedule; concurrency 1. Every run is idempotent, so a cancelled or repeated run does no harm.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from observer.catalog import INGEST_EVENTS
from observer.pipelines.ingest import IngestParameters, IngestReport, nothing_new
from observer.settings import load_settings
from tasks.ingest import drain_spool_into_ops, report_ingestion


@flow(name=INGEST_EVENTS.name, flow_run_name="ingest-events ({params.label})")
def ingest_events(params: IngestParameters = IngestParameters()) -> IngestReport | State:
    if quiet := nothing_new(load_settings(), params):
        return Completed(message=quiet)  # no task, no artifact: the history stays readable
    report = drain_spool_into_ops(params.max_seconds, params.reason, params.linger_seconds)
    report_ingestion(report)
    return report
