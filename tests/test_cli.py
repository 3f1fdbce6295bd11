"""The `observer` command, settings errors at start-up, and prefect.yaml."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments.apply import (
    SCHEDULE_VARIABLES,
    catalog_mismatches,
    prefect_environment,
    render_prefect_yaml,
)
from observer.catalog import FLOWS
from observer.errors import SettingsError
from observer.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def observer(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "observer.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", [[], ["up"], ["webhook"], ["run"], ["deploy"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = observer(*command, "--help")
    assert result.returncode == 0 and "usage: observer" in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("OBSERVER_CYCLE", "0", "greater than 0"),
        ("OBSERVER_CYCLE", "-1", "greater than 0"),
        ("OBSERVER_CYCLE", "abc", "must be a number"),
        ("OBSERVER_PORT", "http", "OBSERVER_PORT"),
        ("GATEWAY_URL", "localhost:3700", "http://"),
        ("OBSERVER_MAX_BODY_BYTES", "0", "OBSERVER_MAX_BODY_BYTES"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(
    observer_env: dict[str, str], name: str, value: str, words: str
) -> None:
    result = observer("webhook", env={**observer_env, name: value})
    assert result.returncode == 2
    assert name in result.stderr and words in result.stderr


def test_fractional_cycle_is_a_number_not_zero(observer_env: dict[str, str]) -> None:
    os.environ["OBSERVER_CYCLE"] = "0.5"
    try:
        assert load_settings().cycle_seconds == 0.5
    finally:
        del os.environ["OBSERVER_CYCLE"]
    with pytest.raises(SettingsError, match="OBSERVER_CYCLE"):
        load_settings(OBSERVER_CYCLE="0")


def test_port_in_use_is_a_clear_non_zero_exit(observer_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = observer("webhook", env={**observer_env, "OBSERVER_PORT": str(port)})
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "OBSERVER_PORT" in result.stderr


def test_prefect_yaml_deploys_every_flow_with_valid_schedules() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    text = (ROOT / "prefect.yaml").read_text()
    env = dict.fromkeys(SCHEDULE_VARIABLES, "30")
    config = yaml.safe_load(render_prefect_yaml(text, env))
    PrefectYamlModel.model_validate(config)
    names = {deployment["name"] for deployment in config["deployments"]}
    assert names == set(FLOWS)
    for deployment in config["deployments"]:
        module, _, function = deployment["entrypoint"].partition(":")
        flow = FLOWS[deployment["name"]].load()
        assert flow.name == deployment["name"] and flow.fn.__name__ == function
        assert (ROOT / module).exists()
        assert deployment["concurrency_limit"]["limit"] == 1
        assert [s["interval"] for s in deployment["schedules"]] == [30]
    assert catalog_mismatches(text) == []


def test_a_prefect_yaml_that_drifts_from_the_table_of_flows_is_refused() -> None:
    text = (ROOT / "prefect.yaml").read_text()
    drifted = text.replace("flows/analyze_errors.py:analyze_errors", "flows/other.py:analyze")
    assert catalog_mismatches(drifted) == [
        "deployment 'analyze-errors': entrypoint 'flows/other.py:analyze',"
        " expected 'flows/analyze_errors.py:analyze_errors'"
    ]
    renamed = text.replace("- name: tail-corrections", "- name: tail-overseer")
    assert sorted(catalog_mismatches(renamed)) == [
        "deployment 'tail-corrections': entrypoint None, expected"
        " 'flows/tail_corrections.py:tail_corrections'",
        "deployment 'tail-overseer' is not in the table of flows",
    ]


@pytest.mark.parametrize(
    ("cycle", "every_cycle", "every_5_cycles"),
    [("30", "30", "180"), ("0.5", "0.5", "2.5"), ("12", "12", "60"), ("90", "120", "480")],
)
def test_schedule_lengths_above_a_minute_are_whole_minutes(
    observer_env: dict[str, str], cycle: str, every_cycle: str, every_5_cycles: str
) -> None:
    env = prefect_environment(load_settings(cycle_seconds=cycle), "http://127.0.0.1:9/api")
    assert env["OBSERVER_CYCLE_SECONDS"] == every_cycle
    assert env["OBSERVER_CONSOLIDATE_SECONDS"] == every_5_cycles
