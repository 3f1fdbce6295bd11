"""`consolidate-playbooks`: repeated successes per endpoint become playbook entries on the gateway.

Scheduled every 5 cycles with concurrency 1 (prefect.yaml). Unlike the original, which re-posted the
same entries forever, a run posts an endpoint's entry only when it has new successes since its last
delivered entry, so a quiet system posts nothing. A run that could not deliver an entry fails,
after reporting, and the entry is tried again by the next run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from observer.playbooks import ConsolidateParameters, Playbook, lock_path
from observer.settings import load_settings
from observer.store import file_lock
from observer.upstream import UpstreamError
from tasks.playbooks import ConsolidationReport, post_entry, read_playbook, report_playbook


class PlaybookNotDelivered(RuntimeError):
    """Some entries did not reach the gateway; they are not remembered and will be posted again."""


@flow(name="consolidate-playbooks", flow_run_name="consolidate-playbooks")
def consolidate_playbooks(
    params: ConsolidateParameters = ConsolidateParameters(),
) -> ConsolidationReport:
    logger = get_run_logger()
    with file_lock(lock_path(load_settings()), blocking=False) as mine:
        if not mine:
            logger.warning("another consolidation run holds the lock: nothing done")
            return ConsolidationReport(dry_run=params.dry_run, note="another run was in progress")
        playbook = read_playbook(params)
        report = ConsolidationReport(
            dry_run=params.dry_run,
            ops_in_window=playbook.ops_in_window,
            successes_in_window=playbook.successes_in_window,
            malformed_lines=playbook.malformed_lines,
            note=playbook.note,
            status={p.evidence.endpoint: p.action for p in playbook.entries},
        )
        if params.dry_run:
            report.status.update({p.evidence.endpoint: "would post" for p in playbook.to_post})
        else:
            _post_all(playbook, report)
    report_playbook(playbook, report)
    failed = report.count("failed")
    if failed:
        raise PlaybookNotDelivered(
            f"{failed} entr(y/ies) not delivered, {report.count('not attempted')} not attempted;"
            " they stay unposted and the next run tries again"
        )
    return report


def _post_all(playbook: Playbook, report: ConsolidationReport) -> None:
    """Post the changed entries in order; after the gateway proves down, attempt no more."""
    gateway_down = ""
    for planned in playbook.to_post:
        endpoint = planned.evidence.endpoint
        if gateway_down:
            report.status[endpoint] = f"not attempted: {gateway_down}"
            continue
        state = post_entry(planned, return_state=True)
        if state.is_completed():
            report.status[endpoint] = "posted"
            continue
        error = state.result(raise_on_failure=False)
        report.status[endpoint] = f"failed: {error}"
        if not isinstance(error, UpstreamError) or error.status is None or error.status >= 500:
            gateway_down = "the gateway failed on an earlier entry"
