"""Operating the product: unknown parameter names refused at every door, `observer run` against a
real server and worker (or none), and `observer status` against a running and a stopped product."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from observer.catalog import ANALYZE_ERRORS, FLOWS
from observer.instance import WORK_POOL
from observer.intake import record_ops
from observer.settings import load_settings
from tests.conftest import ROOT
from tests.fakes import WebhookProcess, api_request
from tests.product import sample_op


def observer(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "observer.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# ── unknown parameter names ─────────────────────────────────────────────────────────────────────


def test_observer_run_refuses_an_unknown_name_before_asking_any_server(
    observer_env: dict[str, str],
) -> None:
    result = observer("run", "analyze-errors", "-p", "dryrun=true", env=observer_env)
    assert result.returncode == 2
    assert "unknown parameter(s) 'dryrun'" in result.stderr
    assert "valid: since_hours, endpoint, source" in result.stderr and "dry_run" in result.stderr


def test_observer_run_refuses_a_bad_value_naming_the_field(observer_env: dict[str, str]) -> None:
    result = observer("run", "ingest-events", "-p", "max_seconds=-1", env=observer_env)
    assert result.returncode == 2
    assert "max_seconds: Input should be greater than 0" in result.stderr


@pytest.mark.parametrize(
    "parameters",
    [{"params": {"dryrun": True}}, {"dryrun": True}],
    ids=["inside-params", "top-level"],
)
def test_the_server_refuses_unknown_names_before_a_run_exists(
    deployed_api: str, parameters: dict[str, object]
) -> None:
    deployment = httpx.get(f"{deployed_api}/deployments/name/{ANALYZE_ERRORS.deployment}").json()
    runs_before = _run_count(deployed_api, deployment["id"])
    answer = httpx.post(
        f"{deployed_api}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": parameters},
    )
    assert answer.status_code == 409, answer.text
    assert "dryrun" in answer.json()["detail"]
    assert _run_count(deployed_api, deployment["id"]) == runs_before


def test_prefect_deployment_run_with_an_unknown_name_is_refused(deployed_api: str) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "prefect", "deployment", "run", ANALYZE_ERRORS.deployment),
            *("--params", '{"params": {"dryrun": true}}'),
        ],
        env={**os.environ, "PREFECT_API_URL": deployed_api},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "dryrun" in result.stdout + result.stderr


def test_run_forms_are_closed_and_show_plain_optional_fields(deployed_api: str) -> None:
    """What the UI's run form is built from: no unknown names, and no `null` type or default
    (the form would offer a "None" type, then refuse its own empty field as not a number)."""
    for entry in FLOWS.values():
        url = f"{deployed_api}/deployments/name/{entry.deployment}"
        schema = httpx.get(url).json()["parameter_openapi_schema"]
        assert schema["additionalProperties"] is False
        assert None not in schema["properties"]["params"]["default"].values()
        [model] = schema["definitions"].values()
        assert model["additionalProperties"] is False
        for name, field in model["properties"].items():
            assert "anyOf" not in field, (entry.name, name)
            assert field.get("default", "unset") is not None, (entry.name, name)


def _run_count(api_url: str, deployment_id: str) -> int:
    query = {"deployments": {"id": {"any_": [deployment_id]}}}
    return httpx.post(f"{api_url}/flow_runs/count", json=query).json()


# ── observer run ────────────────────────────────────────────────────────────────────────────────


def test_observer_run_without_a_server_says_so_and_fails(observer_env: dict[str, str]) -> None:
    env = {**observer_env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    result = observer("run", "ingest-events", env=env)
    assert result.returncode == 1
    assert "no Prefect server answers at http://127.0.0.1:9/api" in result.stderr
    assert "--ephemeral" in result.stderr


def _quiet_environment(observer_env: dict[str, str], home: Path) -> dict[str, str]:
    """A new user's environment: none of the test session's Prefect quieting, a Prefect home of
    its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("DO_NOT_TRACK", None)
    return {**env, **observer_env, "PREFECT_HOME": str(home)}


def test_an_ephemeral_run_is_quiet_and_ends_cleanly(
    observer_env: dict[str, str], tmp_path: Path
) -> None:
    """A healthy run on a temporary server: no ERROR line (the events worker, the log worker and
    the server's telemetry each printed one), its result, exit status 0; from the checkout (whose
    prefect.toml names the server of `observer up`) and from any other directory, both at once
    (each waits mostly for its own server)."""
    corrections = Path(observer_env["OVERSEER_CORRECTIONS_PATH"])
    corrections.parent.mkdir(parents=True)
    corrections.write_text('{"correction":"c1"}\n{"correction":"c2"}\n')
    runs = {}
    for where, cwd in (("checkout", ROOT), ("elsewhere", tmp_path)):
        runs[where] = subprocess.Popen(
            [sys.executable, "-m", "observer.cli", "run", "--ephemeral", "tail-corrections"],
            env={
                **_quiet_environment(observer_env, tmp_path / f"home-{where}"),
                "OBSERVER_DATA_DIR": str(tmp_path / f"data-{where}"),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
    for where, process in runs.items():
        try:
            stdout, stderr = process.communicate(timeout=600)
        finally:
            process.kill()
        output = stdout + stderr
        assert process.returncode == 0, (where, output)
        assert "ERROR" not in output and "Traceback" not in output, (where, output)
        assert "Error" not in output, (where, output)
        assert "observer: tail-corrections: Completed" in stderr, (where, stderr)
        assert json.loads(stdout)["recorded"] == 2, (where, stdout)


def test_the_ephemeral_start_up_allowance_is_in_help_and_checked() -> None:
    usage = observer("run", "--help", env={}).stdout
    assert "--startup-seconds N" in usage and "(default 120 s;" in " ".join(usage.split())
    refused = observer("run", "--ephemeral", "--startup-seconds", "0", "ingest-events", env={})
    assert refused.returncode == 2 and "must be a whole number of seconds" in refused.stderr


def test_the_ephemeral_start_up_allowance_reaches_prefects_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A unit test: the allowance goes to Prefect's temporary server as its start-up timeout, and
    a server that does not start in time is one line naming the option."""
    from prefect.server.api import server as prefect_server

    from observer.cli import main
    from observer.errors import CommandError

    asked: list[object] = []

    class SlowServer:
        api_url = "http://127.0.0.1:9/api"

        def start(self, timeout: int | None = None) -> None:
            asked.append(timeout)
            raise RuntimeError(
                "Timed out while attempting to connect to ephemeral Prefect API server."
            )

        def stop(self) -> None:
            asked.append("stopped")

    monkeypatch.setattr(prefect_server, "SubprocessASGIServer", SlowServer)
    with pytest.raises(CommandError, match=r"did not answer within 7 s \(--startup-seconds\)"):
        from observer.cli.runner import run_flow_command

        run_flow_command(load_settings(), "ingest-events", [], ephemeral=True, startup_seconds=7)
    assert asked == [7, "stopped"]
    assert main(["run", "--ephemeral", "--startup-seconds", "9", "ingest-events"]) == 1
    assert asked[2:] == [9, "stopped"]


def test_observer_run_runs_the_deployment_and_follows_it(
    worker: dict[str, str], worker_data: Path
) -> None:
    settings = load_settings(data_dir=worker_data)
    ops = settings.layout.ops_path
    before = ops.stat().st_size if ops.exists() else 0  # the worker's data is the session's
    op = sample_op(input_summary="via observer run")
    record_ops(settings, [(None, op)])
    result = observer("run", "ingest-events", "-p", "reason=cli", env=worker, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "run 'ingest-events (cli)' created" in result.stderr
    assert "ingest-events: Completed" in result.stderr
    assert "artifact ingest-events: Ingestion run (cli): 1 op(s) into ops.jsonl" in result.stderr
    assert ops.read_bytes()[before:] == op.to_line() + b"\n"


# ── observer status ─────────────────────────────────────────────────────────────────────────────


def test_status_of_a_stopped_product_says_what_is_down(observer_env: dict[str, str]) -> None:
    env = {**observer_env, "OBSERVER_PORT": "9", "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    now = datetime.now(UTC)
    ops = [
        sample_op(
            timestamp=(now - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            endpoint=endpoint,
            success=success,
        )
        for minutes, endpoint, success in [
            (7 * 60, "fill", False),  # before the last 6 hours: not drawn
            (350, "fill", True),
            (20, "fill", False),
            (5, "fill", True),
            (5, "search", True),
        ]
    ]
    settings = load_settings(data_dir=Path(observer_env["OBSERVER_DATA_DIR"]))
    settings.layout.ops_path.parent.mkdir(parents=True)
    settings.layout.ops_path.write_bytes(b"".join(op.to_line() + b"\n" for op in ops))
    result = observer("status", "--json", env=env)
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert (status["webhook"]["up"], status["prefect"]["up"], status["worker"]["up"]) == (
        False,
        False,
        False,
    )
    assert "connection refused" in status["webhook"]["detail"]
    assert [d["name"] for d in status["deployments"]] == list(FLOWS)
    trends = status["trends"]
    assert [t["endpoint"] for t in trends["endpoints"]] == ["fill", "search"]
    fill = trends["endpoints"][0]
    assert len(fill["ops"]) == 24 and sum(fill["ops"]) == 3 and sum(fill["failures"]) == 1
    assert fill["ops"][0] == 1 and fill["ops"][-1] == 1 and fill["failures"][-2] == 1
    human = observer("status", env={**env, "COLUMNS": "160"})
    assert human.returncode == 1 and "DOWN" in human.stdout
    assert "Last 6 h per endpoint" in human.stdout
    (line,) = [line for line in human.stdout.splitlines() if line.lstrip().startswith("fill ")]
    assert "█" + " " * 21 + "██" in line  # one mark 350 min ago, then 20 and 5 min ago


def test_status_of_a_running_product(
    worker: dict[str, str], worker_data: Path, tmp_path: Path
) -> None:
    # A webhook that does not wake ingestion, so the event is still in the spool when asked (the
    # worker would ingest it within a second).
    quiet = {k: v for k, v in worker.items() if k != "PREFECT_API_URL"}
    webhook = WebhookProcess({**quiet, "OBSERVER_DATA_DIR": str(worker_data)}, cwd=tmp_path)
    try:
        event = {"input_summary": "waiting", "success": True}
        assert httpx.post(f"{webhook.url}/event", json=event).status_code == 200
        port = webhook.url.rsplit(":", 1)[1]
        result = observer("status", "--json", env={**worker, "OBSERVER_PORT": port})
    finally:
        webhook.stop()
    status = json.loads(result.stdout)
    assert result.returncode == 0, status
    assert status["webhook"]["up"] and status["prefect"]["up"] and status["worker"]["up"]
    assert "test-worker" in status["worker"]["detail"]
    assert status["spool"]["events"] >= 1 and status["spool"]["bytes"] > 0
    assert [d["name"] for d in status["deployments"]] == list(FLOWS)


# ── the console of observer up ──────────────────────────────────────────────────────────────────


def test_a_run_that_ends_badly_is_one_console_line_once(deployed_api: str) -> None:
    from observer.cli.console import RunWatcher

    lines: list[str] = []
    watcher = RunWatcher(deployed_api, WORK_POOL, lines.append)
    deployment = httpx.get(f"{deployed_api}/deployments/name/{ANALYZE_ERRORS.deployment}").json()

    def run_ending(state: str, message: str) -> str:
        # Scheduled an hour ahead, so that the session's worker leaves it to this test.
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        scheduled = {"type": "SCHEDULED", "state_details": {"scheduled_time": later}}
        run = api_request(
            "POST",
            f"{deployed_api}/deployments/{deployment['id']}/create_flow_run",
            json={
                "name": f"console {state.lower()}",
                "parameters": {"params": {}},
                "state": scheduled,
            },
        )
        assert run.status_code == 201, run.text
        run = run.json()
        final = {"type": state, "name": state.title(), "message": message}
        api_request(
            "POST",
            f"{deployed_api}/flow_runs/{run['id']}/set_state",
            json={"state": final, "force": True},
        ).raise_for_status()
        return run["id"]

    failed = run_ending("FAILED", "gateway: cannot reach http://127.0.0.1:9/log\n  Traceback …")
    run_ending("COMPLETED", "posted")
    expected = (
        "analyze-errors: run 'console failed' Failed: gateway: cannot reach"
        f" http://127.0.0.1:9/log Traceback … — {deployed_api.removesuffix('/api')}"
        f"/runs/flow-run/{failed}"
    )
    watcher.check()  # (the session's scheduled runs may add lines of their own)
    assert lines.count(expected) == 1
    assert not any("console completed" in line for line in lines)
    watcher.check()
    assert lines.count(expected) == 1  # said once
    watcher.close()


def test_the_trend_reads_back_to_its_start_or_says_how_far_it_reached() -> None:
    from observer.cli.status import TREND_MARKS, RecentOp, trends

    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    ops = [
        RecentOp(now - timedelta(hours=3), "a", True),
        RecentOp(now + timedelta(minutes=2), "a", False),  # another clock, a little ahead
        RecentOp(now - timedelta(minutes=1), "b", True),
        RecentOp(now - timedelta(minutes=1), "b", True),
    ]
    full = trends(ops, now, reached_back=True)
    assert [t.endpoint for t in full.endpoints] == ["a", "b"]  # as busy: by name
    a = next(t for t in full.endpoints if t.endpoint == "a")
    assert a.ops[TREND_MARKS // 2] == 1 and a.failures[-1] == 1 and full.oldest_read is None
    cut = trends(ops[2:], now, reached_back=False)
    assert cut.oldest_read == "2026-12-01 11:59:00Z"
