"""`analyze-errors`: group new failures, ask the lakehouse LLM for a diagnosis, post it to /log.

Scheduled every cycle (concurrency 1) with the defaults: failures since the last analysis. By hand
from the UI or `observer run analyze-errors -p since_hours=6 -p endpoint=X -p dry_run=true`.
An LLM that stays down, hangs or answers garbage gives a degraded report and a Completed run. A
gateway that is down fails a run made by hand; a scheduled run ends Completed saying `gateway
down:`, and the next ones wait for its back-off (`tasks.gateway`). Nothing is marked analysed that
was not delivered.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from observer.catalog import ANALYZE_ERRORS
from observer.pipelines.analysis import AnalysisReport, AnalyzeParameters, nothing_new
from observer.settings import load_settings
from tasks.analysis import (
    commit_analysis,
    diagnose,
    post_analysis,
    publish_analysis,
    select_failures,
)
from tasks.gateway import gateway_outage


@flow(name=ANALYZE_ERRORS.name, flow_run_name="analyze-errors ({params.label})")
def analyze_errors(params: AnalyzeParameters = AnalyzeParameters()) -> State:
    settings = load_settings()
    if quiet := nothing_new(settings, params):
        return Completed(message=quiet)  # no task, no artifact: the history stays readable
    if waiting := gateway_outage():
        return waiting
    selection = select_failures(params)
    diagnosis = diagnose(selection, params)
    if diagnosis.entry is None or params.dry_run:
        delivery = (
            "dry run: nothing posted, nothing remembered" if params.dry_run else "nothing to post"
        )
        if not params.dry_run:
            commit_analysis(selection, diagnosis)
        publish_analysis(
            AnalysisReport(selection=selection, diagnosis=diagnosis, delivery=delivery)
        )
        return Completed(message=f"{diagnosis.message} ({delivery})", data=diagnosis)
    # The client retries each POST; on top, the task retries (a gateway restart takes a moment).
    delay = 5 * settings.http_backoff_seconds
    posted = post_analysis.with_options(retry_delay_seconds=delay)(
        diagnosis.entry, return_state=True
    )
    if not posted.is_completed():
        delivery = f"NOT delivered, nothing marked analysed: {posted.message}"
        publish_analysis(
            AnalysisReport(selection=selection, diagnosis=diagnosis, delivery=delivery)
        )
        if settled := gateway_outage(posted.result(raise_on_failure=False)):
            return settled
        posted.result()  # raises the gateway error: the run fails visibly
    commit_analysis(selection, diagnosis)
    delivery = "posted to the gateway's /log"
    publish_analysis(AnalysisReport(selection=selection, diagnosis=diagnosis, delivery=delivery))
    return Completed(message=f"{diagnosis.message} (posted)", data=diagnosis)
