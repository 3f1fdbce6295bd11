"""Consolidation steps: read the window and decide, post one endpoint's entry, report the run.

One task per posted entry, so a gateway failure shows on the run page as the failed task of that
endpoint, and the entries delivered before it stay remembered.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from observer.pipelines.playbooks import (
    ConsolidateParameters,
    ConsolidationReport,
    PlannedEntry,
    Playbook,
    build_playbook,
    deliver,
    remember_checked,
)
from observer.settings import load_settings
from tasks.publish import publish


@task(name="build-playbook", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def read_playbook(params: ConsolidateParameters) -> Playbook:
    """Evidence per endpoint from the window of ops.jsonl, and what to post (a read: safe to retry)."""
    playbook = build_playbook(load_settings(), params)
    get_run_logger().info(
        "%d op(s) in the window, %d success(es), %d endpoint(s) with successes, %d to post%s",
        playbook.ops_in_window,
        playbook.successes_in_window,
        len(playbook.entries),
        len(playbook.to_post),
        f"; {playbook.malformed_lines} malformed line(s) skipped"
        if playbook.malformed_lines
        else "",
    )
    return playbook


@task(
    name="post-playbook-entry",
    task_run_name="post-playbook-entry [{planned.evidence.endpoint}]",
    cache_policy=NO_CACHE,
)
def post_entry(planned: PlannedEntry, force: bool) -> str:
    """Post one entry to the gateway's /log and remember it; raises UpstreamError if not taken.

    Retries with backoff happen inside `Upstreams` (timeouts, connection errors, 429, 5xx), so a
    task retry would only multiply the wait on a gateway that is down.
    """
    outcome = deliver(load_settings(), planned, force=force)
    get_run_logger().info(
        "%s the entry of %r (%s)", outcome, planned.evidence.endpoint, planned.reason
    )
    return outcome


@task(name="report-playbook", cache_policy=NO_CACHE)
def report_playbook(report: ConsolidationReport) -> None:
    """The playbook as a table artifact and the run's changes as a markdown artifact."""
    publish(report)


@task(name="remember-window", cache_policy=NO_CACHE)
def remember_window(playbook: Playbook, params: ConsolidateParameters) -> None:
    """Everything due was delivered: while ops.jsonl stays as it is, later runs stop at once."""
    remember_checked(load_settings(), playbook, params)
