"""Long runs on the real worker and server: their progress on the run page moves from 0 to 100, and
one cancelled midway through the Prefect API (what the UI's Cancel does) stops, ends Cancelled and
loses nothing: the next run goes on from its checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from observer.catalog import INGEST_EVENTS, TAIL_CORRECTIONS
from observer.files import load_state
from observer.pipelines.corrections import CorrectionsCheckpoint
from observer.settings import load_settings
from tests.test_worker import (
    cancel,
    create_run,
    ended,
    read_run,
    run_env,
    wait_for,
    wait_for_log,
)

ROW = (
    b'{"task_class":"staffing.fill","reason":"escalation","model":"gpt-oss:120b",'
    b'"correction":"use staffer list %08d, not the cached one; %s",'
    b'"created_at":"2026-12-01T10:00:00.000Z","usage":{"latency_ms":%d}}\n'
)


def write_corrections(path: Path, megabytes: int) -> int:
    """A corrections file of about `megabytes` MB; returns its number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    filler = b"x" * 160
    rows_per_mb = 2**20 // len(ROW % (0, filler, 0))
    count = megabytes * rows_per_mb
    with open(path, "wb") as handle:
        for start in range(0, count, 10_000):
            handle.write(
                b"".join(
                    ROW % (n, filler, n % 500) for n in range(start, min(count, start + 10_000))
                )
            )
    return count


def progress_of(api: str, run_id: str) -> float | None:
    """The run's progress artifact as the run page shows it (None before there is one)."""
    query = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "type": {"any_": ["progress"]}}}
    found = httpx.post(f"{api}/artifacts/filter", json=query, timeout=10).json()
    return float(found[0]["data"]) if found else None


def watch(api: str, run_id: str, stop: Any, timeout: float = 180) -> list[float]:
    """The distinct progress values seen, polling every 0.1 s, until `stop(values, run)`."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = read_run(api, run_id)
        value = progress_of(api, run_id)
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        if stop(seen, run):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} still {read_run(api, run_id)['state']}; progress {seen}")


def until_ended(seen: list[float], run: dict[str, Any]) -> bool:
    return ended(run)


@pytest.mark.timeout(300)  # about 100 MB tailed and 200 MB drained on a shared 2-core machine
def test_a_long_re_read_shows_its_progress_can_be_cancelled_midway_and_the_next_run_ends_at_100(
    worker: dict[str, str], deployed_api: str, tmp_path: Path
) -> None:
    corrections = tmp_path / "kb" / "overseer_corrections.jsonl"
    rows = write_corrections(corrections, 96)
    data = tmp_path / "data"
    env = run_env(data, OVERSEER_CORRECTIONS_PATH=str(corrections))
    settings = load_settings(data_dir=data)

    first = create_run(
        deployed_api, TAIL_CORRECTIONS.deployment, env, {"params": {"from_offset": 0}}
    )
    midway = watch(deployed_api, first, lambda seen, run: any(0 < v < 100 for v in seen))
    assert not ended(read_run(deployed_api, first)), "the run ended before it could be cancelled"
    cancel(deployed_api, first)  # as the UI's Cancel does
    run = wait_for(deployed_api, first, ended, timeout=30)
    assert run["state"]["type"] == "CANCELLED", run["state"]
    stopped_at = progress_of(deployed_api, first)
    assert stopped_at is not None and 0 < stopped_at < 100, (midway, stopped_at)
    offset = load_state(settings.layout.corrections_checkpoint, CorrectionsCheckpoint).offset
    assert 0 < offset < corrections.stat().st_size

    second = create_run(deployed_api, TAIL_CORRECTIONS.deployment, env)  # from the checkpoint
    values = watch(deployed_api, second, until_ended)
    assert read_run(deployed_api, second)["state"]["type"] == "COMPLETED"
    assert values[0] == 0 and values[-1] == 100 and values == sorted(values), values
    assert "/s, about " in wait_for_log(deployed_api, second, "s left; ")  # how far, on the way
    final = wait_for_log(deployed_api, second, "(100.0%)")
    assert final.startswith("corrections read: ") and "/s, done in " in final

    third = create_run(deployed_api, INGEST_EVENTS.deployment, env)  # the spool holds them all
    drained = watch(deployed_api, third, until_ended)
    assert read_run(deployed_api, third)["state"]["type"] == "COMPLETED"
    assert drained[-1] == 100 and drained == sorted(drained), drained
    final = wait_for_log(deployed_api, third, "(100.0%)")
    assert final.startswith("spool drain: ") and "/s, done in " in final
    assert final.endswith(f"; {rows} op(s) ingested")
    lines = settings.layout.ops_path.read_bytes().splitlines()
    assert len(lines) == rows and len(set(lines)) == rows, "a row was lost or doubled"
