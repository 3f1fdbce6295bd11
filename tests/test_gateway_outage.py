"""A gateway that keeps failing: its outage is remembered by the posts themselves, scheduled runs
of the flows that post to it wait with a back-off (settled by the worker, or ending `gateway
down:` when they tried), runs made by hand still try, the console says one line when it goes down
and one when it is back, and nothing is lost or posted twice."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from observer.catalog import ANALYZE_ERRORS, CONSOLIDATE_PLAYBOOKS
from observer.cli.console import GatewayWatcher
from observer.errors import UpstreamError
from observer.files import save_state
from observer.settings import Settings, load_settings
from observer.upstream import MAX_BACKOFF_SECONDS, GatewayOutage, LogEntry, Upstreams
from tests.fakes import FakeUpstream, Reply
from tests.test_worker import (
    create_run,
    ended,
    op_line,
    run_env,
    schedule_due_run,
    states,
    wait_for,
)

ENTRY = LogEntry(operation="o", approach="a", result="r", context="c")


def _post(settings: Settings) -> UpstreamError | None:
    try:
        with Upstreams(settings) as upstreams:
            upstreams.post_log(ENTRY)
    except UpstreamError as error:
        return error
    return None


def test_the_posts_keep_the_outage_with_a_back_off_that_doubles(
    settings: Settings, gateway: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSERVER_CYCLE", "30")
    monkeypatch.setenv("OBSERVER_HTTP_ATTEMPTS", "1")
    settings = load_settings()
    gateway.default("/log", Reply(503))
    waits = []
    for _ in range(7):
        before = time.time()
        assert _post(settings) is not None
        outage = GatewayOutage.read(settings)
        waits.append(round(outage.next_try - before, -1))
    assert waits == [30, 60, 120, 240, 480, MAX_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS]
    assert (outage.outages, outage.failures) == (1, 7) and outage.down
    assert "answered HTTP 503" in outage.last_error
    reason = outage.wait_reason()
    assert reason is not None and reason.startswith(f"gateway down: since {outage.down_since}")
    assert "a run made by hand tries now" in reason

    gateway.default("/log", Reply(400))  # the gateway answers: it refuses one entry, it is up
    assert _post(settings) is not None
    assert not GatewayOutage.read(settings).down
    gateway.default("/log", Reply(503))
    _post(settings)
    assert GatewayOutage.read(settings).outages == 2
    gateway.default("/log", Reply(200))
    assert _post(settings) is None
    back = GatewayOutage.read(settings)
    assert (back.down, back.outages, back.failures, back.wait_reason()) == (False, 2, 0, None)
    assert back.back_at is not None


def test_the_console_says_one_line_when_the_gateway_goes_down_and_one_when_it_is_back(
    settings: Settings,
) -> None:
    path = settings.layout.gateway_state
    lines: list[str] = []
    watcher = GatewayWatcher(str(path), lines.append)
    assert watcher.check() == 0  # no record yet
    save_state(path, GatewayOutage(outages=3, back_at="2026-12-07T10:00:00.000Z"))
    assert watcher.check() == 0  # outages over before the console started are no news
    down = GatewayOutage(
        outages=4, down_since="2026-12-07T11:00:00.000Z", failures=1, last_error="refused"
    )
    save_state(path, down)
    for failures in range(2, 6):  # every failed try of the outage: still one line
        watcher.check()
        save_state(path, down.model_copy(update={"failures": failures}))
    assert watcher.check() == 0
    save_state(path, GatewayOutage(outages=4, back_at="2026-12-07T11:05:00.000Z"))
    assert watcher.check() == 1
    assert watcher.check() == 0
    # Down and back again between two looks: both said.
    save_state(path, GatewayOutage(outages=5, back_at="2026-12-07T11:07:00.000Z"))
    assert watcher.check() == 2
    assert lines == [
        "gateway: down since 2026-12-07T11:00:00.000Z (refused); scheduled runs that post to it"
        " wait, with a back-off, and runs made by hand still try; nothing is lost",
        "gateway: back at 2026-12-07T11:05:00.000Z; the next runs deliver what waited",
        "gateway: down since 2026-12-07T11:07:00.000Z (?); scheduled runs that post to it wait,"
        " with a back-off, and runs made by hand still try; nothing is lost",
        "gateway: back at 2026-12-07T11:07:00.000Z; the next runs deliver what waited",
    ]


# ── through the real worker ─────────────────────────────────────────────────────────────────────


def _schedule_one(api: str, deployment_name: str) -> dict[str, Any]:
    """A run of the deployment's own schedule, due now (as the scheduler makes them), once it
    has ended."""
    return wait_for(api, schedule_due_run(api, deployment_name), ended, timeout=120)


@pytest.fixture
def failures_waiting(worker_data: Path) -> Iterator[Settings]:
    """The worker's data dir with one failure to analyse and no gateway outage on record; what
    the test leaves there is taken back."""
    settings = load_settings(data_dir=worker_data)
    ops = settings.layout.ops_path
    ops.parent.mkdir(parents=True, exist_ok=True)
    before = ops.stat().st_size if ops.exists() else 0
    with open(ops, "ab") as handle:
        handle.write(op_line("gateway outage test", success=False) + b"\n")
    yield settings
    settings.layout.gateway_state.unlink(missing_ok=True)
    with open(ops, "r+b") as handle:
        handle.truncate(before)


@pytest.mark.timeout(600)  # the worker finds a scheduled run made due at its next poll (30 s)
def test_scheduled_runs_wait_for_a_gateway_that_is_down_and_a_run_by_hand_delivers(
    worker: dict[str, str], deployed_api: str, failures_waiting: Settings
) -> None:
    settings = failures_waiting
    # The worker's runs post to a gateway nobody listens on (GATEWAY_URL port 9): the scheduled
    # run that tries fails as a gateway that is down fails, and ends Completed saying so.
    tried = _schedule_one(deployed_api, ANALYZE_ERRORS.deployment)
    message = tried["state"]["message"]
    assert tried["state"]["type"] == "COMPLETED", tried["state"]
    assert message.startswith("gateway down: since "), message
    assert message.endswith("this run delivered nothing, the next one will")
    assert int(tried["infrastructure_pid"]) > 0  # it started: it tried
    outage = GatewayOutage.read(settings)
    assert outage.down and outage.outages == 1 and outage.next_try > time.time()

    # While the back-off lasts, the worker settles the next scheduled runs of both flows that
    # post to the gateway: no process, the reason in the history.
    for deployment in (ANALYZE_ERRORS.deployment, CONSOLIDATE_PLAYBOOKS.deployment):
        settled = _schedule_one(deployed_api, deployment)
        message = settled["state"]["message"]
        assert settled["state"]["type"] == "COMPLETED"
        assert message.startswith("gateway down: since "), message
        assert message.endswith("(checked by the worker: no process started)")
        assert states(deployed_api, settled["id"]) == ["Scheduled", "Completed"]
    assert GatewayOutage.read(settings).failures == outage.failures  # nobody tried meanwhile

    # A run made by hand tries now, against a gateway that is back: it delivers what waited,
    # once, and the outage is over.
    gateway = FakeUpstream()
    try:
        env = run_env(settings.data_dir, GATEWAY_URL=gateway.url)
        run_id = create_run(deployed_api, ANALYZE_ERRORS.deployment, env)
        run = wait_for(deployed_api, run_id, ended, timeout=120)
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert len(gateway.seen("/log")) == 1
        posted = gateway.seen("/log")[0].body
        assert posted["operation"] == "error_analysis: 1 failures"
    finally:
        gateway.close()
    back = GatewayOutage.read(settings)
    assert not back.down and back.back_at is not None
    # Nothing is posted twice: the next run (by hand, to the same gateway) finds nothing new.
    again = FakeUpstream()
    try:
        run_id = create_run(
            deployed_api,
            ANALYZE_ERRORS.deployment,
            run_env(settings.data_dir, GATEWAY_URL=again.url),
        )
        run = wait_for(deployed_api, run_id, ended, timeout=120)
        assert run["state"]["message"].startswith("nothing new:"), run["state"]
        assert again.seen("/log") == []
    finally:
        again.close()
