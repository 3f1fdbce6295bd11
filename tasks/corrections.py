"""Corrections tailing steps: read the file into ops, tell ingestion, report the run."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from observer.catalog import SPOOL_APPENDED_EVENT
from observer.instance import instance_of
from observer.pipelines.corrections import TailReport, tail_corrections
from observer.settings import load_settings
from tasks.progress import RunProgress
from tasks.publish import publish


@task(name="tail-corrections-file", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def tail_corrections_file(
    from_offset: int | None, grace_seconds: float | None, max_bytes: int | None
) -> TailReport:
    """Record new rows as ops. Safe to retry: the checkpoint moves only after rows are durable, and
    rows recorded twice carry the same id, which the intake drops. A long read shows its progress
    on the run page."""
    return tail_corrections(
        load_settings(),
        from_offset=from_offset,
        grace_seconds=grace_seconds,
        max_bytes=max_bytes,
        on_progress=RunProgress(),
    )


@task(name="announce-spool", cache_policy=NO_CACHE)
def announce_spool(recorded: int) -> None:
    """Ask for an ingestion run now (the `ingest-events` trigger) instead of at its safety schedule."""
    emit_event(
        event=SPOOL_APPENDED_EVENT,
        resource={"prefect.resource.id": instance_of(load_settings()).spool_resource},
        payload={"producer": "tail-corrections", "records": recorded},
    )


@task(name="report-tailing", cache_policy=NO_CACHE)
def report_tailing(report: TailReport) -> None:
    """Log the counts and leave them as a table artifact: the run page is the audit trail."""
    logger = get_run_logger()
    if report.busy:
        logger.warning("another run is tailing %s; this one did nothing", report.path)
        return
    if not report.file_found:
        logger.info("%s does not exist yet; nothing to read", report.path)
    logger.info(
        "read %d row(s): %d recorded, %d quarantined; %d byte(s) read, now at byte %d of %d"
        " (lag %d byte(s))",
        report.rows_read,
        report.recorded,
        report.quarantined,
        report.bytes_read,
        report.offset,
        report.size,
        report.lag_bytes,
    )
    for text in report.events:
        logger.warning(text)
    if report.quarantined:
        logger.warning(
            "quarantined %s in %s",
            ", ".join(f"{n} {kind}" for kind, n in sorted(report.quarantined_by_kind.items())),
            load_settings().layout.corrections_quarantine,
        )
    if report.pending_bytes:
        logger.info(
            "an unterminated last line (%d byte(s)) waits for its newline", report.pending_bytes
        )
    if report.budget_reached:
        logger.info("stopped at the per-run byte budget; the next run continues")
    publish(report)
