"""`ObserverWorker`: a Prefect worker type whose flow runs are forked from a warm template.

It is a `BaseWorker` like Prefect's process worker, and keeps what that one gives: a process (and
pid, reported as the run's infrastructure pid) per run, cancellation from the UI or API by a
signal to that process, Crashed on an unexpected exit, and the deployment's concurrency slot taken
when the run goes Pending. What changes is how the process starts: instead of
`python -m prefect.runner._workspace_supervisor` exec'ing `python -m prefect.engine` (two cold
imports, about 7 CPU-seconds on a small machine), the worker's template process, which imported
prefect, polars and the flows once, forks, and the child runs the flow run through Prefect's
engine. The run lifecycle around that process is Prefect's own `FlowRunExecutor`, with
`TemplateStarter` as its starter.

Runs are also picked up sooner and more cheaply than by polling alone: the worker listens to the
server's events for new runs of its pool, wakes itself when a prefetched run falls due and, when a
run ends, starts the runs of the same deployment that were waiting for its concurrency slot (the
server would otherwise retry them only every 30 s).

A *scheduled* run that would find nothing new is settled before any of that: the template answers
the flow's own first-step check (a stat or two) and the worker sets the run Completed with the
flow's "nothing new: …" message, without a process, a Pending state or a concurrency slot. That is
what most of an idle product's runs are. Runs made by hand or by a trigger always start.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus, WorkerFlowRunResponse
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.exceptions import InfrastructureNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect.runner._flow_run_executor import FlowRunExecutorContext
from prefect.runner._hook_runner import HookRunner
from prefect.states import Cancelled, Completed, Scheduled
from prefect.types._datetime import now as utc_now
from prefect.utilities.processutils import sanitize_subprocess_env
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field, PrivateAttr

from observer.catalog import flow_at
from observer.errors import TemplateUnavailable, WarmRunUnsupported
from observer.worker import scheduling
from observer.worker.boot import preload_modules, project_directory
from observer.worker.client import WarmTemplate
from observer.worker.protocol import CheckRequest
from observer.worker.starter import TemplateStarter

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import APIFlow, FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.flows import Flow

WORKER_TYPE = "observer-warm"
SET_WORKING_DIRECTORY = "prefect.deployments.steps.set_working_directory"
AWAITING_SLOT = "AwaitingConcurrencySlot"
STOP_GRACE_SECONDS = 10.0


class ObserverJobConfiguration(BaseJobConfiguration):
    working_dir: Path | None = Field(
        default=None,
        description="Directory the run starts in; defaults to the deployment's"
        " set_working_directory pull step.",
    )
    _entrypoint: str | None = PrivateAttr(default=None)
    _command_configured: bool = PrivateAttr(default=False)

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        self._command_configured = self.command is not None
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )
        if deployment is not None:
            self._entrypoint = deployment.entrypoint
            if self.working_dir is None:
                self.working_dir = working_directory(deployment.pull_steps or [])

    def location(self) -> tuple[Path, str]:
        """Where the forked run starts and which flow it loads, or why it cannot be forked."""
        if self._command_configured:
            raise WarmRunUnsupported(
                f"a command is configured ({self.command!r}); the {WORKER_TYPE} worker forks its"
                " template instead of running commands: use a process work pool for this"
            )
        if not self._entrypoint or ":" not in self._entrypoint:
            raise WarmRunUnsupported(
                f"the deployment's entrypoint {self._entrypoint!r} is not path/to/file.py:flow"
            )
        if self.working_dir is None:
            raise WarmRunUnsupported(
                "no working directory: set the working_dir job variable, or give the deployment"
                " a set_working_directory pull step (the code must already be on this machine)"
            )
        return self.working_dir, self._entrypoint


class ObserverVariables(BaseVariables):
    working_dir: Path | None = Field(
        default=None,
        title="Working Directory",
        description="Directory flow runs start in (default: the deployment's"
        " set_working_directory pull step).",
    )


class ObserverWorkerResult(BaseWorkerResult):
    """The run's process exit: its pid (`identifier`) and status code."""


def working_directory(pull_steps: list[dict[str, Any]]) -> Path | None:
    """The directory of a deployment whose only pull steps set the working directory."""
    directory = None
    for step in pull_steps:
        if set(step) != {SET_WORKING_DIRECTORY}:
            raise WarmRunUnsupported(
                f"pull step {next(iter(step), '?')!r}: the {WORKER_TYPE} worker runs code that is"
                " already on this machine and only supports set_working_directory"
            )
        directory = str(step[SET_WORKING_DIRECTORY]["directory"])
        if "{{" in directory:
            raise WarmRunUnsupported(f"unresolved working directory {directory!r}")
    return Path(directory) if directory else None


class FlowsRemembered:
    """The worker's client as a settled run's job configuration is resolved: a flow's record (its
    name and labels, which do not move where a run starts or what it sees) is read once per flow
    instead of once per run, one API call fewer for every quiet scheduled run; everything else
    goes to the client as it is."""

    def __init__(self, client: PrefectClient) -> None:
        self._client = client
        self._flows: dict[UUID, APIFlow] = {}

    async def read_flow(self, flow_id: UUID) -> APIFlow:
        if flow_id not in self._flows:
            self._flows[flow_id] = await self._client.read_flow(flow_id)
        return self._flows[flow_id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class ObserverWorker(BaseWorker[ObserverJobConfiguration, ObserverVariables, ObserverWorkerResult]):
    type = WORKER_TYPE
    job_configuration = ObserverJobConfiguration
    job_configuration_variables = ObserverVariables
    _description = (
        "Runs each flow run in a process forked from a warm template that has already imported"
        " Prefect, polars and Observer's flows: no new interpreter per run."
    )
    _display_name = "Observer (warm fork)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.template: WarmTemplate | None = None
        self._executors: FlowRunExecutorContext | None = None
        self._warm_stack = AsyncExitStack()
        self._wake_tasks: anyio.abc.TaskGroup | None = None
        self._poll_lock = asyncio.Lock()
        self._woken = asyncio.Event()
        self._wake_timer: asyncio.TimerHandle | None = None
        self._locations: dict[UUID, tuple[Path, str]] = {}
        self._flows_remembered: FlowsRemembered | None = None

    async def setup(self) -> None:
        await super().setup()
        self._flows_remembered = FlowsRemembered(self.client)
        self.template = await self._warm_stack.enter_async_context(
            WarmTemplate(cwd=project_directory(), preload=preload_modules(), logger=self._logger)
        )
        self._executors = await self._warm_stack.enter_async_context(FlowRunExecutorContext())
        self._wake_tasks = await self._warm_stack.enter_async_context(anyio.create_task_group())
        self._wake_tasks.start_soon(self._poll_when_woken)
        self._wake_tasks.start_soon(self._wake_on_new_runs)

    async def teardown(self, *exc_info: Any) -> None:
        if self._wake_tasks is not None:
            self._wake_tasks.cancel_scope.cancel()
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        await self._stop_runs()
        await self._warm_stack.aclose()
        await super().teardown(*exc_info)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        # Polls come from the base class's loop and from wake-ups; one at a time.
        async with self._poll_lock:
            return await super().get_and_submit_flow_runs()

    async def _get_scheduled_flow_runs(self) -> list[WorkerFlowRunResponse]:
        """The base class's query, narrowed to what should start now (see `scheduling`)."""
        found = await super()._get_scheduled_flow_runs()
        plan = scheduling.plan([entry.flow_run for entry in found], utc_now("UTC"))
        for late, successor in plan.skip:
            await self._skip(late, successor)
        self._wake_at(plan.wake_at)
        entries = {entry.flow_run.id: entry for entry in found}
        return [entries[run.id] for run in plan.start if not await self._settled_quietly(run)]

    async def _settled_quietly(self, flow_run: FlowRun) -> bool:
        """Whether this scheduled run would find nothing new and is now Completed, saying so.

        The check is the flow's own (`FlowEntry.nothing_new`), run by the template under the job's
        environment and working directory. Whenever it cannot tell, the run starts as usual.
        """
        if not flow_run.auto_scheduled or self.template is None:
            return False
        try:
            configuration = await self.job_configuration.resolve_for_flow_run(
                flow_run,
                client=cast("PrefectClient", self._flows_remembered),
                work_pool=copy.deepcopy(self.work_pool),
                worker_name=self.name,
                worker_id=self.backend_id,
            )
            cwd, entrypoint = configuration.location()
        except Exception:
            return False  # starting it reports the problem on the run
        entry = flow_at(entrypoint)
        if entry is None:
            return False
        request = CheckRequest(
            flow_run_id=str(flow_run.id),
            flow=entry.name,
            parameters=flow_run.parameters,
            cwd=str(cwd),
            env=sanitize_subprocess_env({**os.environ, **configuration.env}),
        )
        try:
            checked = await self.template.check(request)
        except TemplateUnavailable:
            return False
        if checked.nothing_new is None:
            if checked.error:
                self._logger.warning("could not check %s first: %s", flow_run.name, checked.error)
            return False
        message = f"{checked.nothing_new} (checked by the worker: no process started)"
        result = await self.client.set_flow_run_state(flow_run.id, Completed(message=message))
        if result.status != SetStateStatus.ACCEPT:
            return False
        if checked.run_name:  # as the flow would have named it: the history reads the same
            await self.client.update_flow_run(flow_run.id, name=checked.run_name)
        return True

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ObserverJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ObserverWorkerResult:
        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED
        assert self.template is not None and self._executors is not None
        cwd, entrypoint = configuration.location()
        self._locations[flow_run.id] = (cwd, entrypoint)
        starter = TemplateStarter(
            self.template,
            entrypoint=entrypoint,
            cwd=cwd,
            env=configuration.env,
            control_channel=self._executors.control_channel,
        )
        executor = self._executors.create_executor(
            flow_run,
            starter,
            hook_runner=HookRunner(resolve_flow=self._flow_for_hooks),
            propose_submitting=False,
        )
        try:
            execution = None
            async with anyio.create_task_group() as group:

                async def execute(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
                    nonlocal execution
                    execution = await executor.submit(task_status=task_status)

                handle = await group.start(execute)
                task_status.started(handle.pid)
        finally:
            self._locations.pop(flow_run.id, None)
            if flow_run.deployment_id is not None and self._wake_tasks is not None:
                self._wake_tasks.start_soon(self._start_next_waiting, flow_run)
        if execution is None or execution.status_code is None:
            raise RuntimeError("the flow run's process did not start")
        return ObserverWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: ObserverJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Stop a run's process (Prefect's worker-side cancellation of a pending run)."""
        assert self._executors is not None
        manager = self._executors.process_manager
        for flow_run_id in manager.flow_run_ids():
            handle = manager.get(flow_run_id)
            if handle is not None and str(handle.pid) == str(infrastructure_pid):
                await manager.kill(flow_run_id, grace_seconds=grace_seconds)
                return
        raise InfrastructureNotFound(f"no run process with pid {infrastructure_pid} here")

    async def _flow_for_hooks(self, flow_run: FlowRun) -> Flow[..., Any]:
        """The flow, for its on_cancellation / on_crashed hooks (run by the executor here)."""
        location = self._locations.get(flow_run.id)
        if location is None:  # the run's process has ended already: ask its deployment
            assert flow_run.deployment_id is not None
            deployment = await self.client.read_deployment(flow_run.deployment_id)
            configuration = ObserverJobConfiguration()
            configuration.prepare_for_flow_run(flow_run, deployment)
            location = configuration.location()
        cwd, entrypoint = location
        path, _, function = entrypoint.rpartition(":")
        return load_flow_from_entrypoint(f"{cwd / path}:{function}")

    async def _stop_runs(self) -> None:
        """On shutdown, signal the runs still going and give their executors time to record it."""
        if self._executors is None:
            return
        manager = self._executors.process_manager
        for flow_run_id in manager.flow_run_ids():
            handle = manager.get(flow_run_id)
            if handle is not None:
                handle.graceful_kill()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while manager.flow_run_count() and time.monotonic() < deadline:
            await anyio.sleep(0.1)

    async def _start_next_waiting(self, ended: FlowRun) -> None:
        """A run of this deployment ended, so its slot is free: start the run that waited longest.

        The server would re-try a run waiting for a slot only every 30 s
        (PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS), and its scheduled time is then
        30 s ahead, so the run is moved to now and the worker polls at once.
        """
        try:
            waiting = await self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]),
                        name=FlowRunFilterStateName(any_=[AWAITING_SLOT]),
                    )
                ),
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[ended.deployment_id])
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=50,
            )
            plan = scheduling.next_in_line(waiting)
            for late, successor in plan.skip:
                await self._skip(late, successor)
            for run in plan.start:
                message = f"The run before it, {ended.name!r}, ended: starting now."
                state = Scheduled(scheduled_time=utc_now("UTC"), message=message)
                await self.client.set_flow_run_state(run.id, state, force=True)
        except Exception:
            self._logger.exception("could not start the runs waiting behind %s", ended.id)
        self._woken.set()

    async def _skip(self, late: FlowRun, successor: FlowRun) -> None:
        message = scheduling.skip_message(late, successor)
        try:
            await self.client.set_flow_run_state(
                late.id, Cancelled(name="Skipped", message=message)
            )
        except Exception:
            self._logger.exception("could not mark late run %s skipped", late.id)
        else:
            self.get_flow_run_logger(late).info(message)

    def _wake_at(self, when: Any) -> None:
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        if when is None:
            return
        delay = max(0.0, (when - utc_now("UTC")).total_seconds())
        self._wake_timer = asyncio.get_running_loop().call_later(delay, self._woken.set)

    async def _poll_when_woken(self) -> None:
        while True:
            await self._woken.wait()
            self._woken.clear()
            try:
                await self.get_and_submit_flow_runs()
            except Exception:
                self._logger.exception("polling for flow runs after a wake-up failed")

    async def _wake_on_new_runs(self) -> None:
        """Poll as soon as the server announces a new run in this pool (websocket events).

        If the subscription breaks, the base class's regular polling still finds every run; the
        subscription is tried again with a growing delay.
        """
        delay = 1.0
        while self._work_pool is None:  # known once the worker has synced with the server
            await anyio.sleep(1.0)
        while True:
            runs_of_this_pool = EventFilter(
                event=EventNameFilter(name=["prefect.flow-run.Scheduled"]),
                any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{self.work_pool.id}"]),
            )
            try:
                async with get_events_subscriber(filter=runs_of_this_pool) as subscriber:
                    delay = 1.0
                    async for _event in subscriber:
                        self._woken.set()
            except Exception as exc:
                self._logger.warning(
                    "no event subscription for new runs (%s); polling only, retrying in %.0f s",
                    exc,
                    delay,
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 60.0)
