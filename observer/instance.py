"""This Observer's names on its Prefect server, so that several hosts can share one server.

Each host ingests its own spool into its own ops.jsonl and keeps its own flow state, so its flow
runs must run on that host. `OBSERVER_INSTANCE` gives a host its own work pool (only its worker
picks those runs up), its own deployments (`ingest-events/ingest-events-NAME`, …) and its own spool
event (`observer.spool.NAME`, which only its ingest deployment's trigger matches). Unset, the names
are the single-host ones: `observer`, `ingest-events/ingest-events`, `observer.spool`. The work
pool is of Observer's worker type, `observer-warm`; with OBSERVER_WORKER=process it is
`observer-process`, of Prefect's process type (kept as a baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from observer.catalog import INGEST_EVENTS, SPOOL_RESOURCE_ID
from observer.settings import Settings

WORK_POOL = "observer"
#: OBSERVER_WORKER → (work pool before the instance suffix, its type).
WORK_POOLS = {"warm": (WORK_POOL, "observer-warm"), "process": ("observer-process", "process")}


@dataclass(frozen=True)
class Instance:
    name: str | None = None
    worker: str = "warm"

    @property
    def work_pool(self) -> str:
        return self._suffixed(WORK_POOLS[self.worker][0], "-")

    @property
    def work_pool_type(self) -> str:
        return WORK_POOLS[self.worker][1]

    @property
    def spool_resource(self) -> str:
        """The `prefect.resource.id` of this host's `observer.spool.appended` events."""
        return self._suffixed(SPOOL_RESOURCE_ID, ".")

    @property
    def ingest_deployment(self) -> str:
        return self.deployment(INGEST_EVENTS.name)

    def deployment(self, flow: str) -> str:
        """The deployment name of `flow` (each flow's deployment is named after it)."""
        return self._suffixed(flow, "-")

    def deployment_path(self, flow: str) -> str:
        """`flow/deployment`, as `prefect deployment run` and `run_deployment` name it."""
        return f"{flow}/{self.deployment(flow)}"

    def _suffixed(self, base: str, separator: str) -> str:
        return f"{base}{separator}{self.name}" if self.name else base


def instance_of(settings: Settings) -> Instance:
    return Instance(settings.instance, settings.worker)


def rename_deployments(config: dict[str, Any], instance: Instance) -> dict[str, Any]:
    """prefect.yaml's content with this instance's deployment, work pool and trigger names."""
    for deployment in config["deployments"]:
        deployment["work_pool"] = {**deployment["work_pool"], "name": instance.work_pool}
        if not instance.name:
            continue
        deployment["name"] = instance.deployment(deployment["name"])
        for trigger in deployment.get("triggers") or []:
            if trigger.get("match", {}).get("prefect.resource.id") == SPOOL_RESOURCE_ID:
                trigger["match"] = {
                    **trigger["match"],
                    "prefect.resource.id": instance.spool_resource,
                }
    return config
