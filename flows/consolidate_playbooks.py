"""`consolidate-playbooks`: repeated successes per endpoint become playbook entries on the gateway.

Scheduled every 5 cycles with concurrency 1 (prefect.yaml). Unlike the original, which re-posted the
same entries forever, a run posts an endpoint's entry only when it has new successes since its last
delivered entry, so a quiet system posts nothing. A run that could not deliver an entry fails,
after reporting, and the entry is tried again by the next run; while the gateway is down, a
scheduled run ends Completed saying `gateway down:` instead, and the next ones wait for its
back-off (`tasks.gateway`).
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from observer.catalog import CONSOLIDATE_PLAYBOOKS
from observer.pipelines.playbooks import (
    ConsolidateParameters,
    ConsolidationReport,
    nothing_new,
    post_changed,
)
from observer.settings import load_settings
from tasks.gateway import gateway_outage, settle_delivery
from tasks.playbooks import post_entry, read_playbook, remember_window, report_playbook


@flow(name=CONSOLIDATE_PLAYBOOKS.name, flow_run_name="consolidate-playbooks ({params.label})")
def consolidate_playbooks(
    params: ConsolidateParameters = ConsolidateParameters(),
) -> ConsolidationReport | State:
    if quiet := nothing_new(load_settings(), params):
        return Completed(message=quiet)  # no task, no artifact: the history stays readable
    if waiting := gateway_outage():
        return waiting
    playbook = read_playbook(params)
    report = ConsolidationReport.planned(playbook, dry_run=params.dry_run)
    if not params.dry_run:
        post_changed(playbook, report, post=lambda planned: post_entry(planned, params.force))
    report_playbook(report)
    if settled := settle_delivery(report):
        return settled
    remember_window(playbook, params)
    return report
