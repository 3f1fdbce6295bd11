"""The product on PostgreSQL, as a user runs it: `observer up` with Prefect's
PREFECT_SERVER_DATABASE_CONNECTION_URL pointing at a real PostgreSQL server the test run started, the
flows driven over HTTP, the outcome read back from PostgreSQL itself; then a second host joining
that server with `observer up --no-server`.

PostgreSQL comes from Debian's package (`make test` installs it where it can); these tests skip only
where it is not installed, and say so.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from observer.catalog import FLOWS
from observer.prefect_database import URL_VARIABLE
from tests.fakes import FakeUpstream, Reply
from tests.postgres import Database, PostgresServer
from tests.product import ROOT, ObserverUp, free_port, run_deployment, wait_for_runs

# Minutes, not seconds: a Prefect server migrating a fresh database, then runs on 2 shared cores.
pytestmark = pytest.mark.timeout(900)
# No scheduled run during the test: every run in it is one the test asked for.
A_YEAR = str(365 * 24 * 3600)
MANUAL = {"params": {"since_hours": 6, "max_groups": 5, "dry_run": True}}
RUNS_BY_DEPLOYMENT = """
    select d.name as deployment, wp.name as work_pool, fr.id::text as id, fr.state_type::text as state,
           fr.parameters
    from flow_run fr
    join deployment d on d.id = fr.deployment_id
    join work_queue wq on wq.id = d.work_queue_id
    join work_pool wp on wp.id = wq.work_pool_id
"""


def observer_command(up: ObserverUp, *args: str) -> subprocess.CompletedProcess[str]:
    """`observer ARGS` in a second terminal of the host that `up` started."""
    return subprocess.run(
        [sys.executable, "-m", "observer.cli", *args],
        env=up.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


class Site:
    """One started product and what the test learnt from it."""

    def __init__(self, up: ObserverUp, api_url: str, database: Database) -> None:
        self.up = up
        self.api_url = api_url
        self.database = database


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    gateway, llm = FakeUpstream(), FakeUpstream()
    llm.default("/ai/generate", Reply(body={"text": "the shard is missing; retry elsewhere"}))
    yield gateway, llm
    gateway.close()
    llm.close()


@pytest.fixture(scope="module")
def site(
    postgres: PostgresServer,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    """`observer up` on PostgreSQL, with one correction waiting in the overseer's file."""
    database = postgres.create_database("prefect", "observer")
    gateway, llm = upstreams
    prefect_port = free_port()
    workdir = tmp_path_factory.mktemp("site-a")
    corrections = workdir / "kb" / "overseer_corrections.jsonl"
    corrections.parent.mkdir(parents=True)
    row = {"model": "m1", "task_class": "fill", "reason": "r", "correction": "pg-correction"}
    corrections.write_text(json.dumps(row) + "\n")
    up = ObserverUp(
        workdir,
        {
            URL_VARIABLE: database.prefect_url,
            "GATEWAY_URL": gateway.url,
            "LAKEHOUSE_URL": llm.url,
            "OBSERVER_CYCLE": A_YEAR,
            "OBSERVER_HISTORY_COMPACT_SECONDS": A_YEAR,
            "OBSERVER_OUTCOMES_SECONDS": A_YEAR,
            "OBSERVER_HTTP_TIMEOUT": "5",
            "OBSERVER_HTTP_BACKOFF": "0.01",
        },
        "--prefect-port",
        str(prefect_port),
    )
    try:
        up.wait_up()
        yield Site(up, f"http://127.0.0.1:{prefect_port}/api", database)
    finally:
        up.stop()


def test_the_product_runs_on_postgresql(
    site: Site, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    gateway, llm = upstreams
    # An event through the webhook reaches ops.jsonl through an ingest-events run (its trigger).
    site.up.post_event(
        {
            "input_summary": "pg-event",
            "success": False,
            "error": "shard 7 missing",
            "event_id": "e1",
        }
    )
    site.up.wait_for_op("pg-event")
    # One run of each other flow, from the API as the UI's Run button makes them; one with
    # parameters (a dry run: the LLM is asked, nothing is posted to the gateway).
    runs = {
        "tail-corrections": run_deployment(site.api_url, "tail-corrections", "tail-corrections"),
        "consolidate-playbooks": run_deployment(
            site.api_url, "consolidate-playbooks", "consolidate-playbooks"
        ),
        "analyze-errors": run_deployment(site.api_url, "analyze-errors", "analyze-errors", MANUAL),
        "compact-history": run_deployment(site.api_url, "compact-history", "compact-history"),
        "assess-outcomes": run_deployment(site.api_url, "assess-outcomes", "assess-outcomes"),
    }
    states = wait_for_runs(site.api_url, list(runs.values()))
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{site.up.log()[-5000:]}"
    # The correction the tail-corrections run recorded reached ops.jsonl through a second ingestion.
    site.up.wait_for_op("pg-correction")
    assert llm.seen("/ai/generate") and not gateway.seen("/log")

    # What PostgreSQL holds: Prefect's schema, the deployments, each with a completed run, and
    # the manual run with its parameters.
    database = site.database
    assert database.query("select version_num from alembic_version")
    assert {"pg_trgm"} <= {r["extname"] for r in database.query("select extname from pg_extension")}
    # An ingest run woken by events keeps watching the spool a few seconds after it emptied.
    deadline = time.monotonic() + 60
    while True:
        rows = database.query(RUNS_BY_DEPLOYMENT)
        completed = {r["deployment"] for r in rows if r["state"] == "COMPLETED"}
        if completed >= set(FLOWS) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert completed >= set(FLOWS), rows
    (manual,) = [r for r in rows if r["id"] == runs["analyze-errors"]]
    assert manual["state"] == "COMPLETED"
    assert json.loads(manual["parameters"]) == MANUAL
    assert {r["work_pool"] for r in rows} == {"observer"}
    # …and no SQLite database anywhere under the product's directory.
    assert not list(site.up.workdir.rglob("*.db")), list(site.up.workdir.rglob("*.db"))


def test_a_second_host_joins_with_its_own_pool_deployments_and_data(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = ObserverUp(
        tmp_path_factory.mktemp("site-b"),
        {
            "PREFECT_API_URL": site.api_url,
            "OBSERVER_INSTANCE": "b",
            "OBSERVER_CYCLE": A_YEAR,
            "OBSERVER_HISTORY_COMPACT_SECONDS": A_YEAR,
            "OBSERVER_OUTCOMES_SECONDS": A_YEAR,
            "GATEWAY_URL": "http://127.0.0.1:9",
            "LAKEHOUSE_URL": "http://127.0.0.1:9",
        },
        "--no-server",
    )
    try:
        other.wait_up()
        other.post_event({"input_summary": "pg-host-b", "success": True, "event_id": "b1"})
        other.wait_for_op("pg-host-b")
        # The host's own commands find its own deployments and pool.
        status = json.loads(observer_command(other, "status", "--json").stdout)
        run = observer_command(other, "run", "consolidate-playbooks", "-p", "dry_run=true")
        log = other.log()
    finally:
        other.stop()
    assert [d["name"] for d in status["deployments"]] == [f"{flow}-b" for flow in FLOWS]
    assert status["worker"]["up"] and status["worker"]["url"] == "pool observer-b"
    assert run.returncode == 0, run.stderr
    assert "consolidate-playbooks: Completed" in run.stderr
    assert f"joining the Prefect server at {site.api_url}" in log
    assert b"pg-host-b" not in site.up.ops_on_disk()
    # Its schedules made future runs (not due for a year); what ran is its ingestion and the
    # run asked for above.
    rows = site.database.query(
        RUNS_BY_DEPLOYMENT + " where wp.name = 'observer-b' and fr.state_type <> 'SCHEDULED'"
    )
    assert {r["deployment"] for r in rows} == {"ingest-events-b", "consolidate-playbooks-b"}
    assert "COMPLETED" in {r["state"] for r in rows}
    assert not {r["state"] for r in rows} & {"FAILED", "CRASHED"}, rows
    deployments = site.database.query("select name from deployment")
    assert {f"{flow}-b" for flow in FLOWS} | set(FLOWS) == {r["name"] for r in deployments}
    workers = site.database.query("select name from worker")
    assert {r["name"] for r in workers} == {f"observer-worker@{socket.gethostname()}"}
    assert not list(other.workdir.rglob("*.db"))
