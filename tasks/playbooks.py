"""Consolidation steps: read the window and decide, post one endpoint's entry, report the run.

One task per posted entry, so a gateway failure shows on the run page as the failed task of that
endpoint, and the entries delivered before it stay remembered.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from observer.playbooks import ConsolidateParameters, PlannedEntry, Playbook, build_playbook
from observer.playbooks import deliver as deliver_entry
from observer.settings import load_settings
from observer.upstream import Upstreams

TABLE_KEY = "consolidate-playbooks"
CHANGES_KEY = "consolidate-playbooks-changes"


class ConsolidationReport(BaseModel):
    """What one run did, per endpoint: posted, failed, not attempted, unchanged, below threshold."""

    dry_run: bool = False
    ops_in_window: int = 0
    successes_in_window: int = 0
    malformed_lines: int = 0
    note: str = ""
    status: dict[str, str] = Field(default_factory=dict)

    def count(self, prefix: str) -> int:
        return sum(1 for value in self.status.values() if value.startswith(prefix))


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
def post_entry(planned: PlannedEntry) -> None:
    """Post one entry to the gateway's /log and remember it; raises UpstreamError if not taken.

    Retries with backoff happen inside `Upstreams` (timeouts, connection errors, 429, 5xx), so a
    task retry would only multiply the wait on a gateway that is down.
    """
    settings = load_settings()
    with Upstreams(settings) as upstreams:
        deliver_entry(settings, planned, upstreams)
    get_run_logger().info("posted the entry of %r (%s)", planned.evidence.endpoint, planned.reason)


@task(name="report-playbook", cache_policy=NO_CACHE)
def report_playbook(playbook: Playbook, report: ConsolidationReport) -> None:
    """The playbook as a table artifact and the run's changes as a markdown artifact."""
    rows = [
        {
            "endpoint": p.evidence.endpoint,
            "status": report.status.get(p.evidence.endpoint, p.action),
            "successes": p.evidence.successes,
            "ops": p.evidence.total,
            "result": p.entry.result,
            "approach": p.entry.approach,
        }
        for p in playbook.entries
    ]
    create_table_artifact(
        key=TABLE_KEY,
        table=rows,
        description=(
            f"Playbook: {len(rows)} endpoint(s) with successes in a window of"
            f" {playbook.ops_in_window} op(s)"
        ),
    )
    create_markdown_artifact(
        key=CHANGES_KEY,
        markdown=changes_markdown(playbook, report),
        description="What this consolidation run posted, or would have, and what failed",
    )


def changes_markdown(playbook: Playbook, report: ConsolidationReport) -> str:
    """A short account of the run: counts, then each endpoint whose entry was (to be) posted."""
    verb = "would post" if report.dry_run else "posted"
    lines = [
        "# Playbook changes" + (" (dry run)" if report.dry_run else ""),
        "",
        f"- window: {playbook.ops_in_window} op(s), {playbook.successes_in_window} success(es)",
        f"- {verb}: {report.count('posted') + report.count('would post')},"
        f" failed: {report.count('failed')}, not attempted: {report.count('not attempted')},"
        f" unchanged: {report.count('unchanged')}, below threshold: {report.count('below')}",
    ]
    if playbook.note:
        lines.append(f"- {playbook.note}")
    if playbook.malformed_lines:
        lines.append(f"- {playbook.malformed_lines} malformed line(s) in the window were skipped")
    changed = playbook.to_post
    lines += ["", "| endpoint | outcome | why | result |", "|---|---|---|---|"] if changed else []
    for planned in changed:
        cells = (
            planned.evidence.endpoint,
            report.status.get(planned.evidence.endpoint, ""),
            planned.reason,
            planned.entry.result,
        )
        lines.append("| " + " | ".join(_cell(text) for text in cells) + " |")
    if not changed:
        lines += ["", "Nothing changed since the last entries: nothing was posted."]
    return "\n".join(lines) + "\n"


_MARKDOWN_SPECIAL = frozenset("\\`*_[]<>|#~")


def _cell(text: str) -> str:
    """Text shown as written inside a markdown table cell (`__proto__` is not bold "proto")."""
    flat = " ".join(text.splitlines())
    return "".join("\\" + char if char in _MARKDOWN_SPECIAL else char for char in flat)
