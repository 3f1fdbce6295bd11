"""Ingestion steps: drain the spool into ops.jsonl, then leave the run's report on its page."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from observer.pipelines.ingest import IngestReport, drain_spool
from observer.settings import load_settings
from tasks.progress import RunProgress
from tasks.publish import publish


@task(name="drain-spool", retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def drain_spool_into_ops(max_seconds: float, reason: str, linger_seconds: float) -> IngestReport:
    """Move every complete spooled record into ops.jsonl (safe to retry: checkpointed per batch);
    a large backlog shows its progress on the run page."""
    settings = load_settings()
    return drain_spool(
        settings,
        max_seconds=max_seconds,
        reason=reason,
        linger_seconds=linger_seconds,
        on_progress=RunProgress(),
    )


@task(name="report-ingestion", cache_policy=NO_CACHE)
def report_ingestion(report: IngestReport) -> None:
    """Log the counts and leave them as a table artifact: the run page is the audit trail."""
    logger = get_run_logger()
    logger.info(
        "ingested %d op(s) in %d batch(es), %d duplicate(s) dropped, %d byte(s) read (%s)",
        report.ingested,
        report.batches,
        report.duplicates,
        report.bytes_read,
        report.reason,
    )
    if report.repaired_crash:
        logger.warning("an earlier run stopped mid-batch; ops.jsonl was cut back to its checkpoint")
    if report.torn_bytes:
        logger.warning("skipped %d byte(s) of a torn record in the spool", report.torn_bytes)
    publish(report)
