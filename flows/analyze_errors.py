"""`analyze-errors`: group new failures, ask the lakehouse LLM for a diagnosis, post it to /log.

Scheduled every cycle (concurrency 1) with the defaults: failures since the last analysis. By hand
from the UI or `observer run analyze-errors -p since_hours=6 -p endpoint=X -p dry_run=true`.
An LLM that stays down, hangs or answers garbage gives a degraded report and a Completed run; a
gateway that stays down fails the run, and nothing is marked analysed that was not delivered.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State
from pydantic import Field

from observer.analysis import AnalysisQuery
from observer.settings import load_settings
from tasks.analysis import (
    commit_analysis,
    diagnose,
    post_analysis,
    publish_analysis,
    select_failures,
)


class AnalyzeParameters(AnalysisQuery):
    """Parameters of an analysis run (shown as a form in the Prefect UI)."""

    dry_run: bool = Field(False, description="build and show the analysis, post nothing")

    @property
    def label(self) -> str:
        """What the run covers, for its name in the UI's run list."""
        parts = [f"last {self.since_hours:g}h" if self.since_hours else "since last"]
        parts += [
            f"{name}={value}"
            for name, value in (("endpoint", self.endpoint), ("source", self.source))
            if value
        ]
        parts += [flag for flag in ("force", "dry_run") if getattr(self, flag)]
        return ", ".join(parts)


@flow(name="analyze-errors", flow_run_name="analyze-errors ({params.label})")
def analyze_errors(params: AnalyzeParameters = AnalyzeParameters()) -> State:
    selection = select_failures(params)
    report = diagnose(selection, params)
    if report.entry is None or params.dry_run:
        delivery = (
            "dry run: nothing posted, nothing remembered" if params.dry_run else "nothing to post"
        )
        if not params.dry_run:
            commit_analysis(selection, report)
        publish_analysis(selection, report, delivery)
        return Completed(message=f"{report.message} ({delivery})", data=report)
    # The client retries each POST; on top, the task retries (a gateway restart takes a moment).
    delay = 5 * load_settings().http_backoff_seconds
    posted = post_analysis.with_options(retry_delay_seconds=delay)(report.entry, return_state=True)
    if not posted.is_completed():
        publish_analysis(
            selection, report, f"NOT delivered, nothing marked analysed: {posted.message}"
        )
        posted.result()  # raises the gateway error: the run fails visibly
    commit_analysis(selection, report)
    publish_analysis(selection, report, "posted to the gateway's /log")
    return Completed(message=f"{report.message} (posted)", data=report)
