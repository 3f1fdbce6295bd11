"""`ingest-events`: moves acknowledged events from the durable spool into ops.jsonl.

Runs when the webhook signals new records (a Prefect event and deployment trigger) and on a safety
schedule; concurrency 1. Every run is idempotent, so a cancelled or repeated run does no harm.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from observer.ingest import IngestReport
from tasks.ingest import drain_spool_into_ops, report_ingestion


class IngestParameters(BaseModel):
    """Parameters of an ingestion run (shown as a form in the Prefect UI)."""

    reason: str = Field("manual", description="why this run started: event, schedule or manual")
    max_seconds: float = Field(
        60.0, gt=0, description="stop draining after this long; the rest waits for the next run"
    )


@flow(name="ingest-events", flow_run_name="ingest-events ({params.reason})")
def ingest_events(params: IngestParameters = IngestParameters()) -> IngestReport:
    report = drain_spool_into_ops(params.max_seconds)
    report_ingestion(report, params.reason)
    return report
