"""The table of Observer's flows: each flow's name (also its deployment's) and where it is defined.

The `@flow` decorators, `prefect.yaml` (checked against this table by a test), the `observer run`
command, the webhook's wake-up of ingestion and the deployment tooling all read their names here, so
a flow is named in one place. Loading a flow imports prefect; reading the table does not.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FlowEntry:
    """One flow: `name` is the flow's and its deployment's; `module:function` defines it, and
    `parameters` names its parameters model (`module:Class`, importable without prefect) and
    `check` the function that tells a run it would find nothing new (its first step)."""

    name: str
    module: str
    function: str
    parameters: str
    check: str  # `module:function(settings, params) -> str | None`: the flow's nothing-new check
    posts_to_gateway: bool = False  # its scheduled runs wait while the gateway is known down

    @property
    def entrypoint(self) -> str:
        """The entrypoint as prefect.yaml writes it (a path relative to the project)."""
        return f"{self.module.replace('.', '/')}.py:{self.function}"

    @property
    def deployment(self) -> str:
        """`flow/deployment`, as `prefect deployment run` and `run_deployment` name it."""
        return f"{self.name}/{self.name}"

    def load(self) -> Any:
        """The flow object (imports prefect and the flow's module)."""
        return getattr(importlib.import_module(self.module), self.function)

    def parameters_model(self) -> Any:
        """The flow's parameters model (a `FlowParameters` subclass)."""
        return _attribute(self.parameters)

    def nothing_new(self, parameters: dict[str, Any]) -> str | None:
        """Why a scheduled run with these deployment parameters (`{"params": {...}}`) would stop
        at its first step, or None: finding nothing new (the flow's own check), or, for a flow
        that posts to the gateway, the gateway known down and its back-off not over. Under the
        settings of this process's environment; imports the flow's pipeline (polars), not
        prefect."""
        from observer.settings import load_settings
        from observer.upstream import gateway_wait

        settings = load_settings()
        quiet = _attribute(self.check)(settings, self._params(parameters))
        return quiet or (gateway_wait(settings) if self.posts_to_gateway else None)

    def run_name(self, parameters: dict[str, Any]) -> str | None:
        """The name the flow gives a run with these parameters (its `flow_run_name`), for a run
        that ends without the engine naming it; None when the flow names runs otherwise."""
        template = self.load().flow_run_name
        if not isinstance(template, str):
            return None
        return template.format(params=self._params(parameters))

    def _params(self, parameters: dict[str, Any]) -> Any:
        return self.parameters_model().model_validate(parameters.get("params") or {})


def _attribute(reference: str) -> Any:
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


INGEST_EVENTS = FlowEntry(
    "ingest-events",
    "flows.ingest_events",
    "ingest_events",
    "observer.pipelines.ingest:IngestParameters",
    "observer.pipelines.ingest:nothing_new",
)
TAIL_CORRECTIONS = FlowEntry(
    "tail-corrections",
    "flows.tail_corrections",
    "tail_corrections",
    "observer.pipelines.corrections:TailParameters",
    "observer.pipelines.corrections:nothing_new",
)
ANALYZE_ERRORS = FlowEntry(
    "analyze-errors",
    "flows.analyze_errors",
    "analyze_errors",
    "observer.pipelines.analysis:AnalyzeParameters",
    "observer.pipelines.analysis:nothing_new",
    posts_to_gateway=True,
)
CONSOLIDATE_PLAYBOOKS = FlowEntry(
    "consolidate-playbooks",
    "flows.consolidate_playbooks",
    "consolidate_playbooks",
    "observer.pipelines.playbooks:ConsolidateParameters",
    "observer.pipelines.playbooks:nothing_new",
    posts_to_gateway=True,
)
COMPACT_HISTORY = FlowEntry(
    "compact-history",
    "flows.compact_history",
    "compact_history",
    "observer.pipelines.history:CompactParameters",
    "observer.pipelines.history:nothing_new",
)
ASSESS_OUTCOMES = FlowEntry(
    "assess-outcomes",
    "flows.assess_outcomes",
    "assess_outcomes",
    "observer.pipelines.outcomes:AssessParameters",
    "observer.pipelines.outcomes:nothing_new",
    posts_to_gateway=True,
)

#: The Prefect event that wakes ingestion (the `ingest-events` deployment's trigger in prefect.yaml):
#: sent by the webhook after durable batches and by tail-corrections after recording rows.
SPOOL_APPENDED_EVENT = "observer.spool.appended"
SPOOL_RESOURCE_ID = "observer.spool"

FLOWS: dict[str, FlowEntry] = {
    entry.name: entry
    for entry in (
        INGEST_EVENTS,
        TAIL_CORRECTIONS,
        ANALYZE_ERRORS,
        CONSOLIDATE_PLAYBOOKS,
        COMPACT_HISTORY,
        ASSESS_OUTCOMES,
    )
}


def flow_at(entrypoint: str) -> FlowEntry | None:
    """The flow a deployment's entrypoint (`flows/x.py:x`) names, or None when it is not ours."""
    return next((entry for entry in FLOWS.values() if entry.entrypoint == entrypoint), None)
