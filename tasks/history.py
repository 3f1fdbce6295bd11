"""History steps: seal ops.jsonl, commit the segments, keep the table, show the run.

Each step is safe to retry: sealing is checkpointed, a commit carries the stream's transaction
version (a landed commit is never made again), upkeep steps are idempotent.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from observer.pipelines import history
from observer.pipelines.history import CompactParameters, CompactReport
from observer.settings import load_settings
from tasks.progress import RunProgress
from tasks.publish import publish


@task(name="seal-ops", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def seal_ops() -> str | None:
    """Seal ops.jsonl into the segments when it holds anything (under the ingestion's lock)."""
    sealed = history.seal_hot_file(load_settings())
    if sealed:
        get_run_logger().info("sealed %s", sealed)
    return sealed


@task(name="commit-segments", retries=3, retry_delay_seconds=[5, 15, 30], cache_policy=NO_CACHE)
def commit_to_table(params: CompactParameters, report: CompactReport) -> CompactReport:
    """Commit every sealed segment to the table exactly once, then delete the committed ones."""
    logger = get_run_logger()
    history.commit_segments(load_settings(), params, report, on_progress=RunProgress())
    logger.info(
        "%d op(s), %d byte(s) in %d commit(s); %d segment(s) deleted, %d waiting",
        report.rows,
        report.bytes_in,
        report.commits,
        report.segments_deleted,
        report.segments_waiting,
    )
    return report


@task(name="keep-table", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE)
def keep_the_table(params: CompactParameters, report: CompactReport) -> CompactReport:
    """Retention, compaction of closed days, vacuum and a checkpoint (this host's upkeep)."""
    history.keep_table(load_settings(), params, report)
    upkeep = report.upkeep
    if upkeep.ran:
        get_run_logger().info(
            "upkeep: %d day(s) dropped, %d day(s) compacted (%d file(s) into %d), %d vacuumed",
            len(upkeep.days_dropped),
            len(upkeep.days_compacted),
            upkeep.files_removed,
            upkeep.files_added,
            upkeep.files_vacuumed,
        )
    else:
        get_run_logger().info("upkeep: %s", upkeep.note)
    return report


@task(name="report-history", cache_policy=NO_CACHE)
def report_history(report: CompactReport) -> None:
    """Leave what the run did, and the table per day, on the run page."""
    publish(report)
