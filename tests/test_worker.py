"""The observer-warm worker against a real Prefect server, real processes and real signals: runs
forked from the warm template complete, cancel, crash; deployments wait instead of cancelling; a
burst of webhook notifications makes a handful of ingest runs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from observer.catalog import ANALYZE_ERRORS, INGEST_EVENTS, TAIL_CORRECTIONS
from observer.cli.console import process_children
from observer.intake import record_lines
from observer.ops import Op
from observer.settings import load_settings
from observer.worker import protocol
from observer.worker.boot import preload_modules
from observer.worker.client import WarmTemplate
from observer.worker.template import Template
from tests.conftest import ROOT
from tests.fakes import FakeUpstream, Reply, WebhookProcess, api_call
from tests.product import command_line

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# ── helpers ─────────────────────────────────────────────────────────────────────────────────────


def create_run(
    api: str, deployment: str, env: dict[str, str], parameters: dict[str, Any] | None = None
) -> str:
    """A run made by hand (as the UI's Run or `prefect deployment run`), with its own data dir."""
    found = api_call("GET", f"{api}/deployments/name/{deployment}")
    body = {"parameters": parameters or {}, "job_variables": {"env": env}}
    return api_call("POST", f"{api}/deployments/{found['id']}/create_flow_run", json=body)["id"]


def read_run(api: str, run_id: str) -> dict[str, Any]:
    return api_call("GET", f"{api}/flow_runs/{run_id}")


def wait_for(
    api: str, run_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = read_run(api, run_id)
        if done(run):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {read_run(api, run_id)['state']} after {timeout} s")


def wait_for_log(api: str, run_id: str, text: str, timeout: float = 15) -> str:
    """The run's log line holding `text` (a run's last logs are sent as its process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        query = {"logs": {"flow_run_id": {"any_": [run_id]}}}
        for log in httpx.post(f"{api}/logs/filter", json=query).json():
            if text in log["message"]:
                return log["message"]
        time.sleep(0.2)
    raise AssertionError(f"no log line of run {run_id} holds {text!r}")


def cancel(api: str, run_id: str) -> None:
    """What the UI's Cancel does."""
    httpx.post(
        f"{api}/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
    ).raise_for_status()


def ended(run: dict[str, Any]) -> bool:
    return run["state"]["type"] in FINAL


def states(api: str, run_id: str) -> list[str]:
    return [
        s["name"]
        for s in httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}).json()
    ]


def _due_scheduled_ids(api: str, deployment_id: str) -> set[str]:
    """The deployment's runs made by its schedule that are due by now."""
    due_by = datetime.now(UTC) + timedelta(seconds=2)
    query = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"expected_start_time": {"before_": due_by.isoformat()}},
        "sort": "EXPECTED_START_TIME_DESC",
        "limit": 200,
    }
    runs = api_call("POST", f"{api}/flow_runs/filter", json=query)
    return {run["id"] for run in runs if run["auto_scheduled"]}


def schedule_due_run(api: str, deployment_name: str) -> str:
    """A run of the deployment's own schedule due now, made as the scheduler makes them (the slot
    that fell within the last interval); returns its id. A slot has one run at most, so when the
    last one already has its run the next slot is waited for (at most an interval)."""
    deployment = api_call("GET", f"{api}/deployments/name/{deployment_name}")
    interval = deployment["schedules"][0]["schedule"]["interval"]
    before = _due_scheduled_ids(api, deployment["id"])
    deadline = time.monotonic() + interval + 30
    while time.monotonic() < deadline:
        now = datetime.now(UTC).timestamp()
        window = {
            "start_time": datetime.fromtimestamp(now - interval + 1, UTC).isoformat(),
            "end_time": datetime.fromtimestamp(now + 1, UTC).isoformat(),
            "max_runs": 1,
        }
        api_call("POST", f"{api}/deployments/{deployment['id']}/schedule", json=window)
        made = _due_scheduled_ids(api, deployment["id"]) - before
        if made:
            return made.pop()
        time.sleep(1)
    raise AssertionError(f"no slot of {deployment_name}'s schedule came due")


def run_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {"OBSERVER_DATA_DIR": str(data_dir), **extra}


def op_line(marker: str, *, success: bool = True) -> bytes:
    return Op(
        timestamp="2026-04-23T10:00:00.000Z",
        endpoint="scenario:fill",
        input_summary=marker,
        success=success,
        duration_ms=5,
        output_summary="ok" if success else "",
        error=None if success else f"staffer {marker} not found",
    ).to_line()


def one_failure_to_analyse(
    data: Path, marker: str, llm: FakeUpstream, gateway: FakeUpstream, *, timeout: str
) -> dict[str, str]:
    """A data dir whose ops.jsonl holds one failure; the environment of a run analysing it."""
    ops = load_settings(data_dir=data).layout.ops_path
    ops.parent.mkdir(parents=True)
    ops.write_bytes(op_line(marker, success=False) + b"\n")
    return run_env(
        data, LAKEHOUSE_URL=llm.url, GATEWAY_URL=gateway.url, OBSERVER_HTTP_TIMEOUT=timeout
    )


@pytest.fixture
def llm_and_gateway() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    llm, gateway = FakeUpstream(), FakeUpstream()
    yield llm, gateway
    llm.close()
    gateway.close()


# ── runs forked from the template ───────────────────────────────────────────────────────────────


def test_a_warm_run_completes_with_its_logs_and_artifacts(
    worker: dict[str, str], deployed_api: str, tmp_path: Path
) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    record_lines(settings, [("warm-1", op_line("warm run"))])
    params = {"params": {"reason": "warm-test"}}
    run_id = create_run(deployed_api, INGEST_EVENTS.deployment, run_env(settings.data_dir), params)
    run = wait_for(deployed_api, run_id, ended)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["name"] == "ingest-events (warm-test)"
    assert int(run["infrastructure_pid"]) > 0  # a process of its own, reported like any worker's
    assert settings.layout.ops_path.read_bytes() == op_line("warm run") + b"\n"
    assert wait_for_log(deployed_api, run_id, "ingested 1 op(s)")
    artifacts = httpx.post(
        f"{deployed_api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
    ).json()
    assert [a["key"] for a in artifacts] == ["ingest-events"]


def test_a_scheduled_run_with_nothing_new_ends_without_a_process(
    worker: dict[str, str], deployed_api: str
) -> None:
    """A run of tail-corrections' own schedule (made as the scheduler makes them, due now); the
    worker's data dir has no corrections file, so the worker settles it: Completed with the flow's
    own message, no Pending or Running, no process."""
    run_id = schedule_due_run(deployed_api, TAIL_CORRECTIONS.deployment)
    run = wait_for(deployed_api, run_id, ended, timeout=60)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    deadline = time.monotonic() + 15  # the worker names the run just after it settles it
    while run["name"] != "tail-corrections (new rows)" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = read_run(deployed_api, run["id"])
    message = run["state"]["message"]
    assert message.startswith("nothing new: ") and message.endswith("no process started)")
    assert run["name"] == "tail-corrections (new rows)"  # as the flow names its runs
    assert not run["infrastructure_pid"]
    assert states(deployed_api, run["id"]) == ["Scheduled", "Completed"]


def test_a_run_cancelled_through_the_api_stops_and_ends_cancelled(
    worker: dict[str, str],
    deployed_api: str,
    tmp_path: Path,
    llm_and_gateway: tuple[FakeUpstream, FakeUpstream],
) -> None:
    llm, gateway = llm_and_gateway
    llm.default("/ai/generate", Reply(body={"text": "late"}, delay=60))  # the run waits on it
    env = one_failure_to_analyse(tmp_path / "data", "st-1", llm, gateway, timeout="90")
    run_id = create_run(deployed_api, ANALYZE_ERRORS.deployment, env)
    wait_for(deployed_api, run_id, lambda r: r["state"]["type"] == "RUNNING")
    deadline = time.monotonic() + 30
    while not llm.seen("/ai/generate") and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(read_run(deployed_api, run_id)["infrastructure_pid"])

    asked = time.monotonic()
    cancel(deployed_api, run_id)
    run = wait_for(deployed_api, run_id, ended, timeout=30)
    assert run["state"]["type"] == "CANCELLED", run["state"]
    assert time.monotonic() - asked < 10
    assert not _alive(pid), "the run's process is still there"
    assert not gateway.seen("/log")


def test_a_run_killed_with_9_ends_crashed_and_the_next_ingestion_repairs_its_batch(
    worker: dict[str, str], deployed_api: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    settings = load_settings(data_dir=data)
    template = op_line("MARKER-0000000")
    count = 320_000  # about 75 MB: three 32 MB batches, each appended then checkpointed
    record_lines(
        settings,
        (
            (None, template.replace(b"MARKER-0000000", f"MARKER-{n:07d}".encode()))
            for n in range(count)
        ),
    )
    run_id = create_run(deployed_api, INGEST_EVENTS.deployment, run_env(data))
    run = wait_for(deployed_api, run_id, lambda r: bool(r["infrastructure_pid"]), timeout=60)
    pid = int(run["infrastructure_pid"])

    ops, checkpoint = settings.layout.ops_path, settings.layout.ingest_checkpoint
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it between a batch's append and its checkpoint
        if ops.exists() and checkpoint.exists() and ops.stat().st_size > _checkpointed(checkpoint):
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    else:
        pytest.fail("never saw a batch appended and not yet checkpointed")
    half_written = ops.stat().st_size

    run = wait_for(deployed_api, run_id, ended, timeout=30)
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert "-9" in run["state"]["message"] or "SIGKILL" in run["state"]["message"]
    assert half_written > _checkpointed(checkpoint)

    second = create_run(deployed_api, INGEST_EVENTS.deployment, run_env(data))
    assert wait_for(deployed_api, second, ended, timeout=120)["state"]["type"] == "COMPLETED"
    lines = ops.read_bytes().splitlines()
    assert len(lines) == count and len(set(lines)) == count, "an op was lost or doubled"
    assert wait_for_log(deployed_api, second, "cut back to its checkpoint")


# ── the template ────────────────────────────────────────────────────────────────────────────────


def check_request(flow: str, env: dict[str, str], cwd: Path = ROOT) -> protocol.CheckRequest:
    return protocol.CheckRequest(
        flow_run_id=str(uuid.uuid4()), flow=flow, parameters={}, cwd=str(cwd), env=env
    )


def test_the_template_is_single_threaded_when_it_forks_and_is_restarted_when_it_dies(
    deployed_api: str, tmp_path: Path
) -> None:
    corrections = tmp_path / "corrections.jsonl"
    env = {**os.environ, "OBSERVER_DATA_DIR": str(tmp_path / "data")}
    env["OVERSEER_CORRECTIONS_PATH"] = str(corrections)

    async def scenario() -> tuple[protocol.Ready, protocol.Forked, int, protocol.Ready]:
        logger = logging.getLogger("test.template")
        async with WarmTemplate(cwd=ROOT, preload=preload_modules(), logger=logger) as template:
            ready = template.ready
            assert ready is not None
            # A scheduled run's first-step check, answered in the template under the run's
            # environment, which is then put back (the next check sees another file).
            missing = await template.check(check_request(TAIL_CORRECTIONS.name, env))
            assert missing.nothing_new == f"nothing new: {corrections} does not exist yet"
            assert missing.run_name == "tail-corrections (new rows)"
            corrections.write_text('{"ts":"2026-04-23T10:00:00Z","kind":"retry"}\n')
            grown = await template.check(check_request(TAIL_CORRECTIONS.name, env))
            assert grown.nothing_new is None and grown.error is None
            elsewhere = await template.check(check_request(TAIL_CORRECTIONS.name, env, tmp_path))
            assert elsewhere.nothing_new is None and "not in this template's checkout" in str(
                elsewhere.error
            )
            request = protocol.RunRequest(
                flow_run_id=str(uuid.uuid4()),  # no such run: the child reports it and exits
                entrypoint=INGEST_EVENTS.entrypoint,
                cwd=str(ROOT),
                env={**os.environ, "PREFECT_API_URL": deployed_api},
            )
            forked = await template.fork(request)
            returncode = await asyncio.wait_for(template.wait(forked.pid), 60)
            os.kill(ready.pid, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while (template.ready is None or template.ready.pid == ready.pid) and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.1)
            assert template.ready is not None, "the template was not restarted"
            return ready, forked, returncode, template.ready

    ready, forked, returncode, restarted = asyncio.run(scenario())
    assert ready.threads == 1 and forked.threads == 1  # what the template counted, then forked
    assert set(preload_modules()) <= set(ready.preloaded)
    assert forked.pid != ready.pid and returncode != 0
    assert restarted.pid != ready.pid and restarted.threads == 1


def test_the_worker_adopts_the_template_forked_at_its_boot_and_shares_its_imports(
    worker: dict[str, str],
) -> None:
    """`observer.worker.boot` imports once and forks: the template is the worker's child running
    the same command line (not a second interpreter), single-threaded, and the memory of what
    both imported is shared between them (anonymous pages only fork can share)."""
    (boot,) = [
        pid for pid in process_children(os.getpid()) if "observer.worker.boot" in command_line(pid)
    ]
    (template,) = process_children(boot)
    assert command_line(template) == command_line(boot)
    assert len(os.listdir(f"/proc/{template}/task")) == 1
    assert _shared_anonymous_mb(template) >= 10


def test_the_template_refuses_to_fork_when_it_is_not_single_threaded() -> None:
    ours, theirs = socket.socketpair()
    template = Template(theirs)  # in this process, which now runs a second thread
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        request = protocol.RunRequest(flow_run_id="r1", entrypoint="f.py:f", cwd=".", env={})
        assert template._fork(request) is None
    finally:
        stop.set()
        thread.join()
    reply = protocol.decode_reply(ours.recv(65536).splitlines()[0])
    assert isinstance(reply, protocol.Refused) and reply.threads >= 2
    assert "only safe with one" in reply.reason
    ours.close()
    theirs.close()


# ── collisions: wait, never silently cancel ─────────────────────────────────────────────────────


def test_a_manual_run_made_during_another_run_of_the_deployment_waits_then_runs(
    worker: dict[str, str],
    deployed_api: str,
    tmp_path: Path,
    llm_and_gateway: tuple[FakeUpstream, FakeUpstream],
) -> None:
    llm, gateway = llm_and_gateway
    llm.default("/ai/generate", Reply(body={"text": "restart the shard"}, delay=4))
    env = one_failure_to_analyse(tmp_path / "data", "st-2", llm, gateway, timeout="30")
    first = create_run(deployed_api, ANALYZE_ERRORS.deployment, env)
    wait_for(deployed_api, first, lambda r: r["state"]["type"] == "RUNNING")
    manual = create_run(deployed_api, ANALYZE_ERRORS.deployment, env, {"params": {"dry_run": True}})
    wait_for(deployed_api, manual, lambda r: r["state"]["name"] == "AwaitingConcurrencySlot")

    first_run = wait_for(deployed_api, first, ended)
    manual_run = wait_for(deployed_api, manual, ended)
    assert first_run["state"]["type"] == "COMPLETED", first_run["state"]
    assert manual_run["state"]["type"] == "COMPLETED", manual_run["state"]
    assert "AwaitingConcurrencySlot" in states(deployed_api, manual)
    # Started when the first one ended, not at the server's 30 s re-check.
    waited = _seconds(manual_run["start_time"]) - _seconds(first_run["end_time"])
    assert waited < 10, waited
    assert len(gateway.seen("/log")) == 1  # the first posted; the manual one was a dry run


# ── ingestion without a run flood ───────────────────────────────────────────────────────────────


def test_a_burst_of_webhook_notifications_makes_a_handful_of_ingest_runs(
    worker: dict[str, str], deployed_api: str, worker_data: Path, tmp_path: Path
) -> None:
    deployment = httpx.get(f"{deployed_api}/deployments/name/{INGEST_EVENTS.deployment}").json()
    since = datetime.now(UTC).isoformat()
    webhook = WebhookProcess({**worker, "OBSERVER_DATA_DIR": str(worker_data)}, cwd=tmp_path)
    sent: list[str] = []
    try:

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=10) as client:

                async def one(n: int) -> None:
                    for k in range(60):  # 8 clients x 60 events, each acknowledged durably
                        marker = f"burst-{n}-{k}"
                        body = {"event_id": marker, "input_summary": marker, "success": True}
                        assert (await client.post(f"{webhook.url}/event", json=body)).is_success
                        sent.append(marker)
                        await asyncio.sleep(0.01)

                await asyncio.gather(*(one(n) for n in range(8)))

        asyncio.run(burst())
        ops = load_settings(data_dir=worker_data).layout.ops_path
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen = {Op.model_validate_json(line).input_summary for line in _lines(ops)}
            if set(sent) <= seen:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"{len(set(sent) - seen)} event(s) not ingested within 90 s")
    finally:
        webhook.stop()
    runs = httpx.post(
        f"{deployed_api}/flow_runs/filter",
        json={
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"start_time": {"after_": since}},
        },
    ).json()
    assert 1 <= len(runs) <= 10, f"{len(runs)} ingest runs for {len(sent)} events"
    assert all(run["state"]["type"] != "CANCELLED" for run in runs)


# ── small helpers ───────────────────────────────────────────────────────────────────────────────


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _shared_anonymous_mb(pid: int) -> float:
    """Memory of `pid` shared with another process outside any file mapping (heap, anonymous)."""
    shared, anonymous = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split()
        if not first[0].endswith(":"):  # a mapping's header: address range, perms, ..., [path]
            anonymous = len(first) < 6 or first[5] == "[heap]"
        elif anonymous and first[0] in ("Shared_Clean:", "Shared_Dirty:"):
            shared += int(first[1])
    return shared / 1024


def _checkpointed(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["ops_bytes"])
    except (OSError, ValueError, KeyError):
        return 1 << 62


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
