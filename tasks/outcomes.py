"""Outcomes steps: judge what is new (and commit it), post the changes, show the run.

Judging commits the state atomically before anything is posted; posting acknowledges each change
right after the gateway took it. Both are safe to run again: a retry or a rerun posts nothing the
gateway already took (see `observer.pipelines.outcomes`).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from observer.outcomes.records import Change
from observer.pipelines import outcomes
from observer.pipelines.outcomes import AssessParameters, Delivery, OutcomesReport
from observer.settings import load_settings
from tasks.publish import publish


@task(name="judge-outcomes", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def judge_outcomes(params: AssessParameters) -> OutcomesReport:
    """Fold the new ops and recorded interventions into the judging's state and commit it."""
    report = outcomes.judge(load_settings(), params)
    counts = report.counts
    get_run_logger().info(
        "%s: %d op(s), %d intervention(s) new (%d opened, %d joined); %d decided, %d regressed,"
        " %d alert(s); %d change(s) to post",
        report.read,
        counts.ops,
        counts.interventions,
        counts.opened,
        counts.joined,
        counts.decided,
        counts.regressed,
        counts.alerts,
        len(report.to_post),
    )
    for note in report.notes:
        get_run_logger().warning(note)
    return report


@task(name="post-outcomes", cache_policy=NO_CACHE)
def post_outcomes(changes: list[Change]) -> Delivery:
    """Post each pending change to the gateway's /log and acknowledge it at once. Retries with
    backoff happen inside `Upstreams`; a task retry would only multiply the wait on a gateway
    that is down."""
    delivery = outcomes.post_pending(load_settings(), changes)
    logger = get_run_logger()
    for change_id, status in delivery.status.items():
        (logger.info if status == "posted" else logger.warning)("%s: %s", change_id, status)
    return delivery


@task(name="publish-outcomes", cache_policy=NO_CACHE)
def publish_outcomes(report: OutcomesReport) -> None:
    """The interventions (table) and what the run changed, with its charts (markdown)."""
    publish(report)
