"""Starting a flow run by forking the warm template: Prefect's `ProcessStarter` strategy.

Prefect's `FlowRunExecutor` owns a run's lifecycle around the process (cancellation through the
control channel and a signal, Crashed on a non-zero exit, hooks); a starter only makes the process
and reports when it ends. `EngineCommandStarter` does that with `python -m prefect.engine`; this
one asks the template for a fork, with the same environment that starter would give the child.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.utilities.processutils import sanitize_subprocess_env

from observer.worker.client import WarmTemplate
from observer.worker.protocol import RunRequest

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.runner._control_channel import ControlChannel


@dataclass
class ForkedProcess:
    """What `ProcessHandle` needs of a process: its pid and, once it ended, its return code."""

    pid: int
    returncode: int | None = None


class TemplateStarter:
    def __init__(
        self,
        template: WarmTemplate,
        *,
        entrypoint: str,
        cwd: Path,
        env: dict[str, str | None],
        control_channel: ControlChannel | None,
    ) -> None:
        self._template = template
        self._entrypoint = entrypoint
        self._cwd = cwd
        self._env = env
        self._control_channel = control_channel

    async def start(
        self,
        flow_run: FlowRun,
        task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        control_env: dict[str, str] = {}
        if self._control_channel is not None:
            port, token = self._control_channel.register(flow_run.id)
            control_env = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
        # The job configuration's env already holds the worker's Prefect settings under the job's
        # own variables (BaseJobConfiguration.prepare_for_flow_run), so the job's values win.
        env: dict[str, str | None] = {
            **os.environ,
            **self._env,
            "PREFECT__FLOW_RUN_ID": str(flow_run.id),
            # The executor, not the engine, records a cancellation and runs its hooks.
            "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
            "PREFECT__FLOW_ENTRYPOINT": self._entrypoint,
            **control_env,
        }
        request = RunRequest(
            flow_run_id=str(flow_run.id),
            entrypoint=self._entrypoint,
            cwd=str(self._cwd),
            env=sanitize_subprocess_env(env),
        )
        try:
            forked = await self._template.fork(request)
        except BaseException:
            if self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
            raise
        process = ForkedProcess(forked.pid)
        # The run leads its own session: a cancellation signals its whole process group.
        scope = create_isolated_termination_scope(process.pid)
        task_status.started(ProcessHandle(process, termination_scope=scope))  # type: ignore[arg-type]
        process.returncode = await self._template.wait(forked.pid)
