"""Several hosts on one Prefect server: each host's names, and `observer up --no-server` refusing
what would not work (no server named, none answering, another host's worker on its pool)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.apply import SCHEDULE_VARIABLES, render_prefect_yaml
from observer.instance import Instance
from observer.prefect_api import PrefectApiUnusable, refuse_another_hosts_pool, worker_name
from tests.fakes import FakeUpstream
from tests.product import ROOT, free_port


def up_no_server(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    variables = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OBSERVER_") and k != "PREFECT_API_URL"
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "observer.cli", "up", "--no-server"],
        env={
            **variables,
            "OBSERVER_DATA_DIR": str(tmp_path / "data"),
            "OBSERVER_PORT": str(free_port()),
            "PREFECT_API_URL": "",  # unset, not the checkout's prefect.toml
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert time.monotonic() - started < 30, "a refusal must come at once"
    return result


def test_an_instance_renames_pool_deployments_and_trigger() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    env = {**dict.fromkeys(SCHEDULE_VARIABLES, "30"), "OBSERVER_INSTANCE": "eu-2"}
    config = yaml.safe_load(render_prefect_yaml((ROOT / "prefect.yaml").read_text(), env))
    PrefectYamlModel.model_validate(config)
    assert [d["name"] for d in config["deployments"]] == [
        "ingest-events-eu-2",
        "tail-corrections-eu-2",
        "analyze-errors-eu-2",
        "consolidate-playbooks-eu-2",
        "compact-history-eu-2",
        "assess-outcomes-eu-2",
    ]
    assert {d["work_pool"]["name"] for d in config["deployments"]} == {"observer-eu-2"}
    (trigger,) = config["deployments"][0]["triggers"]
    assert trigger["match"] == {"prefect.resource.id": "observer.spool.eu-2"}
    # Without an instance the file is prefect.yaml as written, with its schedule lengths.
    plain = render_prefect_yaml(
        (ROOT / "prefect.yaml").read_text(), {**env, "OBSERVER_INSTANCE": ""}
    )
    assert "name: ingest-events\n" in plain and "name: observer\n" in plain
    assert Instance("eu-2").ingest_deployment == "ingest-events-eu-2"


def test_no_server_without_prefect_api_url_says_what_to_set(tmp_path: Path) -> None:
    result = up_no_server({}, tmp_path)
    assert result.returncode == 2 and "PREFECT_API_URL" in result.stderr


def test_no_server_with_nothing_answering_is_a_clear_exit(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api"
    result = up_no_server({"PREFECT_API_URL": url}, tmp_path)
    assert result.returncode == 1
    assert f"PREFECT_API_URL={url} does not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_server_with_a_url_that_is_not_prefects_api_says_so(tmp_path: Path) -> None:
    other = FakeUpstream()  # answers 200 {} to everything: not a Prefect API
    try:
        result = up_no_server({"PREFECT_API_URL": other.url}, tmp_path)
    finally:
        other.close()
    assert result.returncode == 1 and "is not a Prefect API" in result.stderr


def test_an_invalid_instance_name_is_a_settings_error(tmp_path: Path) -> None:
    result = up_no_server({"OBSERVER_INSTANCE": "Host B/1"}, tmp_path)
    assert result.returncode == 2 and "OBSERVER_INSTANCE" in result.stderr


@pytest.mark.usefixtures("prefect_server")
def test_a_pool_with_another_hosts_worker_online_is_refused(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    pool = Instance("shared").work_pool
    refuse_another_hosts_pool(api_url, pool, "OBSERVER_INSTANCE")  # no such pool yet: fine
    httpx.post(f"{api_url}/work_pools/", json={"name": pool, "type": "process"}).raise_for_status()
    _heartbeat(api_url, pool, worker_name())
    refuse_another_hosts_pool(api_url, pool, "OBSERVER_INSTANCE")  # our own, from a restart
    _heartbeat(api_url, pool, "observer-worker@elsewhere")
    with pytest.raises(PrefectApiUnusable, match="observer-worker@elsewhere"):
        refuse_another_hosts_pool(api_url, pool, "OBSERVER_INSTANCE")
    # The same through the command, before it deploys anything.
    result = up_no_server({"PREFECT_API_URL": api_url, "OBSERVER_INSTANCE": "shared"}, tmp_path)
    assert result.returncode == 1
    assert "another host" in result.stderr and "OBSERVER_INSTANCE" in result.stderr
    deployments = httpx.post(f"{api_url}/deployments/filter", json={}).json()
    assert not [d for d in deployments if d["name"].endswith("-shared")]


def _heartbeat(api_url: str, pool: str, name: str) -> None:
    answer = httpx.post(
        f"{api_url}/work_pools/{pool}/workers/heartbeat",
        json={"name": name, "heartbeat_interval_seconds": 30},
    )
    answer.raise_for_status()
