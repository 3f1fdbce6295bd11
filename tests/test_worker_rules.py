"""The worker's scheduling rules (pure functions over Prefect's flow-run objects), and the Prefect
3.9.1 APIs the worker is built on, pinned: if an upgrade moves one, this fails before a run does."""

from __future__ import annotations

import inspect
import threading
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import prefect
from prefect.client.schemas.objects import FlowRun
from prefect.states import Scheduled

from observer.worker import scheduling

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEPLOYMENT = uuid4()


def run(seconds: float, *, auto: bool = True, name: str = "r") -> FlowRun:
    when = NOW + timedelta(seconds=seconds)
    return FlowRun(
        id=uuid4(),
        name=name,
        flow_id=uuid4(),
        deployment_id=DEPLOYMENT,
        auto_scheduled=auto,
        expected_start_time=when,
        next_scheduled_start_time=when,
        state=Scheduled(scheduled_time=when),
    )


def test_a_run_starts_when_due_and_a_later_one_sets_the_wake_up() -> None:
    due, soon, later = run(-1), run(7), run(20)
    plan = scheduling.plan([later, due, soon], NOW)
    assert plan.start == [due] and plan.skip == []
    assert plan.wake_at == NOW + timedelta(seconds=7)


def test_a_late_scheduled_run_whose_successor_is_due_is_skipped() -> None:
    late, successor = run(-60, name="late"), run(-1, name="next")
    plan = scheduling.plan([late, successor], NOW)
    assert plan.start == [successor]
    assert plan.skip == [(late, successor)]
    assert "'next'" in scheduling.skip_message(late, successor)


def test_runs_made_by_hand_are_never_skipped_and_go_first_come_first_served() -> None:
    manual_old, manual_new = run(-90, auto=False), run(-30, auto=False)
    scheduled_late, scheduled_due = run(-60), run(-2)
    plan = scheduling.plan([manual_new, scheduled_due, manual_old, scheduled_late], NOW)
    assert plan.start == [manual_old, manual_new, scheduled_due]
    assert plan.skip == [(scheduled_late, scheduled_due)]


def test_of_the_runs_waiting_for_a_slot_the_oldest_starts() -> None:
    manual, late, newest = run(-90, auto=False), run(-60), run(-30)
    plan = scheduling.next_in_line([newest, late, manual])
    assert plan.start == [manual]
    assert plan.skip == [(late, newest)]


# ── Prefect APIs the worker relies on ───────────────────────────────────────────────────────────


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_prefect_is_the_version_the_worker_was_built_against() -> None:
    assert prefect.__version__ == "3.9.1"


def test_the_engine_entry_the_forked_run_calls() -> None:
    from prefect.context import refresh_global_settings_context
    from prefect.flow_engine import _run_flow_from_runtime_entrypoint

    # What `python -m prefect.flow_engine ENTRYPOINT` (and `python -m prefect.engine`) run.
    assert parameters(_run_flow_from_runtime_entrypoint) == ["flow_run_id", "entrypoint"]
    assert parameters(refresh_global_settings_context) == []
    assert callable(threading._shutdown)  # type: ignore[attr-defined]


def test_the_worker_hooks_overridden() -> None:
    from prefect.workers.base import BaseJobConfiguration, BaseWorker, BaseWorkerResult

    assert parameters(BaseWorker.run) == ["self", "flow_run", "configuration", "task_status"]
    assert parameters(BaseWorker.kill_infrastructure) == [
        "self",
        "infrastructure_pid",
        "configuration",
        "grace_seconds",
    ]
    for name in ("setup", "get_and_submit_flow_runs", "_get_scheduled_flow_runs"):
        assert parameters(getattr(BaseWorker, name)) == ["self"], name
    assert parameters(BaseWorker.teardown) == ["self", "exc_info"]
    assert inspect.iscoroutinefunction(BaseWorker._get_scheduled_flow_runs)
    assert parameters(BaseJobConfiguration.prepare_for_flow_run) == [
        "self",
        "flow_run",
        "deployment",
        "flow",
        "work_pool",
        "worker_name",
        "worker_id",
    ]
    assert set(BaseWorkerResult.model_fields) == {"identifier", "status_code"}


def test_the_run_lifecycle_pieces_the_worker_plugs_into() -> None:
    from prefect.client.schemas.responses import WorkerFlowRunResponse
    from prefect.runner._control_channel import ControlChannel
    from prefect.runner._flow_run_executor import FlowRunExecutorContext, ProcessStarter
    from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope

    assert parameters(FlowRunExecutorContext.create_executor) == [
        "self",
        "flow_run",
        "starter",
        "resolve_flow",
        "propose_submitting",
        "hook_runner",
    ]
    assert parameters(ProcessStarter.start) == ["self", "flow_run", "task_status"]
    assert parameters(ProcessHandle) == ["_process", "termination_scope"]
    assert parameters(create_isolated_termination_scope) == ["pid"]
    assert parameters(ControlChannel.register) == ["self", "flow_run_id"]
    assert parameters(ControlChannel.unregister) == ["self", "flow_run_id"]
    assert set(WorkerFlowRunResponse.model_fields) == {"work_pool_id", "work_queue_id", "flow_run"}


def test_the_worker_type_is_found_through_the_collections_entry_point() -> None:
    from prefect.workers.base import BaseWorker

    from observer.worker.worker import WORKER_TYPE, ObserverWorker

    assert BaseWorker.get_worker_class_from_type(WORKER_TYPE) is ObserverWorker
    template = ObserverWorker.get_default_base_job_template()
    assert template["job_configuration"]["working_dir"] == "{{ working_dir }}"
