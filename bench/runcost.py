"""CPU for one run that finds nothing new, worker + run + server together, three ways:

- the product's warm worker (`observer-warm`: the run is forked from a warm template);
- Prefect's process worker (`OBSERVER_WORKER=process`: a new interpreter per run; the product's
  worker before);
- the alternative not taken: one long-lived process that runs the flow runs itself with
  `prefect.flow_engine.run_flow(flow, flow_run=...)` (no process per run).

Each starts the product (`observer up`) with schedules too far apart to fire, measures its idle
CPU for 20 s, then makes runs of `tail-corrections` and `analyze-errors` one after the other (no
corrections file, no failures: each finds nothing new) and charges each run the product's CPU
above that idle rate while it lasted. The runs are made two ways: as the scheduler makes them
(`POST /deployments/{id}/schedule`: auto-scheduled runs of the deployment's own schedule, due at
once), which the warm worker settles without a process, and by hand (`create_flow_run`), which
always start a process and stop at their first step. The benchmark's own reads (finding the run,
polling its state) are measured again afterwards, on an ended run, and taken off. The in-process
alternative runs in this benchmark's own process against the warm product's server; its CPU is
this process's plus the server's above idle. `--runs=N` per deployment (default 5, `--quick` 3);
`--no-process` skips Prefect's process worker.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx

from bench.procs import Running, breakdown, command_of, product, tree, tree_cpu

DEPLOYMENTS = ("tail-corrections/tail-corrections", "analyze-errors/analyze-errors")
DAY = 86400
TARGET_CPU_S = 0.3  # one scheduled run that finds nothing new, worker + run + server
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def main(options: list[str]) -> int:
    runs = int(next((o.split("=")[1] for o in options if o.startswith("--runs=")), 0)) or (
        3 if "--quick" in options else 5
    )
    results: dict[str, float] = {}
    kinds = ("warm",) if "--no-process" in options else ("warm", "process")
    for kind in kinds:
        with product(worker=kind, cycle="86400") as running:
            time.sleep(20)
            idle_parts = breakdown(running.pid)
            idle = _idle_rate(running.pid, 20)
            idle_parts = _rates(idle_parts, breakdown(running.pid), 20)
            parts_before, started = breakdown(running.pid), time.monotonic()
            results[f"{kind}, scheduled"] = _per_run(running, runs, idle, kind, "scheduled")
            _print_split(
                kind,
                _rates(parts_before, breakdown(running.pid), 1.0),
                idle_parts,
                time.monotonic() - started,
                runs * len(DEPLOYMENTS),
            )
            results[f"{kind}, by hand"] = _per_run(running, runs, idle, kind, "by hand")
            if kind == "warm":
                results["in-process run_flow"] = _in_process(running, runs)
    print()
    for name, cost in results.items():
        print(f"one no-op run, {name:<22} {cost:6.3f} CPU-s (worker + run + server, net)")
    verdict = "met" if results["warm, scheduled"] <= TARGET_CPU_S else "NOT met"
    print(f"scheduled no-op run: target <= {TARGET_CPU_S} CPU-s {verdict}")
    for how in ("scheduled", "by hand") if "process" in kinds else ():
        ratio = results[f"process, {how}"] / results[f"warm, {how}"]
        print(f"process worker / warm worker, {how}: {ratio:.1f}x")
    print("machine: shared; medians of the runs of one invocation")
    return 0


def _rates(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], seconds: float
) -> dict[str, float]:
    """CPU seconds per second (or per `seconds`) of each kind of process between two breakdowns."""
    return {
        kind: (cpu - before.get(kind, (0.0, 0.0))[0]) / seconds for kind, (cpu, _) in after.items()
    }


def _print_split(
    kind: str, spent: dict[str, float], idle: dict[str, float], elapsed: float, runs: int
) -> None:
    """Where a scheduled run's CPU goes: each kind of process, above its own idle rate."""
    split = {name: (cpu - idle.get(name, 0.0) * elapsed) / runs for name, cpu in spent.items()}
    parts = ", ".join(
        f"{name} {cpu:.3f}" for name, cpu in sorted(split.items(), key=lambda i: -i[1])
    )
    print(f"{kind:<8} scheduled, CPU-s per run by process: {parts}", flush=True)


def _idle_rate(pid: int, seconds: float) -> float:
    before, started = tree_cpu(pid), time.monotonic()
    time.sleep(seconds)
    return (tree_cpu(pid) - before) / (time.monotonic() - started)


def _per_run(running: Running, runs: int, idle: float, kind: str, how: str) -> float:
    """Median CPU of one run made `how` ("scheduled" or "by hand") that finds nothing new, net
    of the benchmark's own calls to find and watch it (measured after, the same calls again)."""
    costs: list[float] = []
    calls: list[int] = []  # the benchmark's own reads per run: finding it, polling its state
    with httpx.Client(base_url=running.api, timeout=30) as api:
        for deployment in DEPLOYMENTS:
            found = api.get(f"/deployments/name/{deployment}").json()
            for number in range(runs):
                before, started = tree_cpu(running.pid), time.monotonic()
                if how == "scheduled":
                    run = _scheduled_run(api, found["id"], number)
                    reads = 1
                else:
                    run = _retry(
                        functools.partial(
                            api.post, f"/deployments/{found['id']}/create_flow_run", json={}
                        )
                    )
                    reads = 0
                while _read_state(api, str(run["id"])) not in FINAL:
                    reads += 1
                    time.sleep(0.5)
                time.sleep(2.0)  # the run's process exits and the server records its last events
                elapsed = time.monotonic() - started
                costs.append(tree_cpu(running.pid) - before - idle * elapsed)
                calls.append(reads + 1)
            print(
                f"{kind:<8} {how:<9} {deployment.split('/')[0]:<17} median"
                f" {statistics.median(costs[-runs:]):.3f} CPU-s per run (n={runs})",
                flush=True,
            )
        own = _reads_cost(running, api, str(run["id"]), round(statistics.median(calls)), idle)
    gross = statistics.median(costs)
    print(
        f"{kind:<8} {how:<9} the benchmark's own reads ({statistics.median(calls):.0f} a run):"
        f" {own:.3f} CPU-s; a run net of them {gross - own:.3f} CPU-s",
        flush=True,
    )
    return gross - own


def _read_state(api: httpx.Client, run_id: str) -> str:
    return api.get(f"/flow_runs/{run_id}").json()["state"]["type"]


def _reads_cost(running: Running, api: httpx.Client, run_id: str, reads: int, idle: float) -> float:
    """What `reads` reads of an ended run cost the product, with the same pause after them."""
    costs = []
    for _ in range(5):
        before, started = tree_cpu(running.pid), time.monotonic()
        for _ in range(reads):
            _read_state(api, run_id)
        time.sleep(2.0)
        costs.append(tree_cpu(running.pid) - before - idle * (time.monotonic() - started))
    return statistics.median(costs)


def _scheduled_run(api: httpx.Client, deployment_id: str, number: int) -> dict[str, object]:
    """A run of the deployment's own daily schedule, made as Prefect's scheduler makes them
    (`auto_scheduled`), due at a past midnight so that it starts at once: `number` days back."""
    midnight = int(time.time()) // DAY * DAY - (number + 1) * DAY
    start = datetime.fromtimestamp(midnight, UTC)
    window = {
        "start_time": start.isoformat(),
        "end_time": (start + timedelta(seconds=1)).isoformat(),
        "max_runs": 1,
    }
    _retry(functools.partial(api.post, f"/deployments/{deployment_id}/schedule", json=window))
    query = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {
            "expected_start_time": {
                "after_": (start - timedelta(seconds=1)).isoformat(),
                "before_": (start + timedelta(seconds=1)).isoformat(),
            }
        },
    }
    found = _retry(functools.partial(api.post, "/flow_runs/filter", json=query))
    assert isinstance(found, list) and found, "the deployment's schedule made no run"
    return found[0]


def _in_process(running: Running, runs: int) -> float:
    """The alternative: this process runs the flow runs with Prefect's engine, no process each."""
    os.environ["PREFECT_API_URL"] = running.api
    os.environ["OBSERVER_DATA_DIR"] = str(running.workdir / "data")
    from prefect import get_client
    from prefect.context import refresh_global_settings_context
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    from observer.catalog import FLOWS

    refresh_global_settings_context()
    server = next(p for p in tree(running.pid) if "server start" in command_of(p))

    async def pending_run(deployment: str) -> object:
        async with get_client() as client:
            found = await client.read_deployment_by_name(deployment)
            return await client.create_flow_run_from_deployment(found.id, state=Pending())

    costs: list[float] = []
    for deployment in DEPLOYMENTS:
        flow = FLOWS[deployment.split("/")[0]].load()
        run_flow(flow, flow_run=asyncio.run(pending_run(deployment)))  # warm-up: imports, clients
        time.sleep(5)
        idle = _idle_rate(server, 10)
        for _ in range(runs):
            flow_run = asyncio.run(pending_run(deployment))
            ours, theirs, started = time.process_time(), tree_cpu(server), time.monotonic()
            run_flow(flow, flow_run=flow_run)
            time.sleep(2.0)
            elapsed = time.monotonic() - started
            costs.append(time.process_time() - ours + tree_cpu(server) - theirs - idle * elapsed)
        print(
            f"in-process {deployment.split('/')[0]:<17} median"
            f" {statistics.median(costs[-runs:]):.3f} CPU-s per run (n={runs})",
            flush=True,
        )
    return statistics.median(costs)


def _retry(call: Callable[[], httpx.Response]) -> dict[str, object]:
    """An API call, retried on 503 (the SQLite database busy) as Prefect's own client does."""
    for _ in range(20):
        answer = call()
        if answer.status_code != 503:
            answer.raise_for_status()
            return answer.json()
        time.sleep(0.5)
    answer.raise_for_status()
    return answer.json()
