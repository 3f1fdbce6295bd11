"""`assess-outcomes`: judge every correction, diagnosis and playbook entry by what followed it,
and post the verdicts, regressions and alerts to the gateway's /log, once each.

Scheduled every 5 minutes (OBSERVER_OUTCOMES_SECONDS; concurrency 1). A run reads only what is
new (ops since its watermark, interventions recorded since its mark), commits the judging's state
before posting anything, and acknowledges each post right after the gateway took it, so a rerun
posts nothing twice. A run that finds nothing new stops before its first task (the worker settles
such scheduled runs without a process). While the gateway is down, the changes stay pending: a
scheduled run ends Completed saying `gateway down:` and the next ones wait for its back-off
(`tasks.gateway`); the first run after it is back posts them.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from observer.catalog import ASSESS_OUTCOMES
from observer.pipelines.outcomes import AssessParameters, OutcomesReport, nothing_new
from observer.settings import load_settings
from tasks.gateway import gateway_outage, settle_delivery
from tasks.outcomes import judge_outcomes, post_outcomes, publish_outcomes


@flow(name=ASSESS_OUTCOMES.name, flow_run_name="assess-outcomes ({params.label})")
def assess_outcomes(params: AssessParameters = AssessParameters()) -> OutcomesReport | State:
    if quiet := nothing_new(load_settings(), params):
        return Completed(message=quiet)  # no task, no artifact: the history stays readable
    if not params.dry_run and (waiting := gateway_outage()):
        return waiting
    report = judge_outcomes(params)
    if report.to_post:
        report.delivery = post_outcomes(report.to_post)
    publish_outcomes(report)
    if settled := settle_delivery(report):
        return settled
    return Completed(message=report.summary, data=report)
