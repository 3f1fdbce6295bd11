"""`consolidate-playbooks`: repeated successes per endpoint become playbook entries on the gateway.

Scheduled every 5 cycles with concurrency 1 (prefect.yaml). Unlike the original, which re-posted the
same entries forever, a run posts an endpoint's entry only when it has new successes since its last
delivered entry, so a quiet system posts nothing. A run that could not deliver an entry fails,
after reporting, and the entry is tried again by the next run.
"""

from __future__ import annotations

from prefect import flow

from observer.catalog import CONSOLIDATE_PLAYBOOKS
from observer.pipelines.playbooks import ConsolidateParameters, ConsolidationReport, post_changed
from tasks.playbooks import post_entry, read_playbook, report_playbook


@flow(name=CONSOLIDATE_PLAYBOOKS.name, flow_run_name="consolidate-playbooks ({params.label})")
def consolidate_playbooks(
    params: ConsolidateParameters = ConsolidateParameters(),
) -> ConsolidationReport:
    playbook = read_playbook(params)
    report = ConsolidationReport.planned(playbook, dry_run=params.dry_run)
    if not params.dry_run:
        post_changed(playbook, report, post=lambda planned: post_entry(planned, params.force))
    report_playbook(report)
    report.raise_for_delivery()
    return report
