"""Analysis steps: select failures, diagnose them, post the entry, remember it, show the run."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from observer.pipelines import analysis
from observer.pipelines.analysis import AnalysisReport, AnalyzeParameters, Diagnosis, Selection
from observer.settings import load_settings
from observer.upstream import LogEntry, Upstreams
from tasks.publish import publish


@task(name="select-failures", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def select_failures(params: AnalyzeParameters) -> Selection:
    """Read and group the failures of this run (reads only; safe to retry)."""
    selection = analysis.select(load_settings(), params)
    get_run_logger().info(
        "%d failure(s) read (%s): %d in %d new group(s), %d in known groups",
        selection.failures,
        selection.note,
        selection.fresh_failures,
        selection.fresh_groups,
        selection.known_failures,
    )
    return selection


@task(name="diagnose", cache_policy=NO_CACHE)
def diagnose(selection: Selection, params: AnalyzeParameters) -> Diagnosis:
    """Cached answer, else the LLM (the client retries), else a degraded report: never raises for the LLM."""
    diagnosis = analysis.diagnose(load_settings(), selection, params)
    logger = get_run_logger()
    if diagnosis.kind == "degraded":
        logger.warning("%s; %s", diagnosis.message, diagnosis.llm_error)
    else:
        logger.info(diagnosis.message)
    return diagnosis


@task(name="post-analysis", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def post_analysis(entry: LogEntry) -> None:
    """POST the entry to the gateway's /log; raising makes Prefect retry, then fail the run."""
    with Upstreams(load_settings()) as upstreams:
        upstreams.post_log(entry)


@task(name="commit-analysis", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def commit_analysis(selection: Selection, diagnosis: Diagnosis) -> None:
    """Only now is the watermark moved and are the groups remembered as delivered (and the
    diagnosis recorded for assess-outcomes to judge)."""
    if problem := analysis.commit(load_settings(), selection, diagnosis):
        get_run_logger().warning("the diagnosis was delivered, but %s", problem)


@task(name="publish-analysis", cache_policy=NO_CACHE)
def publish_analysis(report: AnalysisReport) -> None:
    """Leave the report (markdown) and the groups (table) on the run page, whatever happened."""
    publish(report)
