"""assess-outcomes through the real files: ops written by the real spool and ingestion, diagnoses
journalled by a real analyze-errors delivery, the gateway and the LLM real HTTP servers on
loopback; a kill -9 of a run in a child process; one run of the flow on a real Prefect server
whose page is read back; `observer outcomes --json` as a subprocess. The streams are those of
tests/test_outcomes.py (a fixed seed each), written in arrival batches as time goes on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from prefect.client.orchestration import get_client

from flows.assess_outcomes import assess_outcomes
from observer.catalog import ASSESS_OUTCOMES
from observer.outcomes import ALERT_HINT
from observer.outcomes.view import OutcomesView
from observer.pipelines import analysis, outcomes, playbooks
from observer.pipelines.analysis import AnalyzeParameters
from observer.pipelines.grouping import normalise_error
from observer.pipelines.outcomes import AssessParameters, OutcomesCheckpoint, OutcomesReport
from observer.pipelines.playbooks import ConsolidateParameters
from observer.settings import Settings, load_settings
from observer.upstream import Upstreams
from tests.conftest import ROOT
from tests.fakes import FakeUpstream, Hang, Reply
from tests.history_streams import ingest
from tests.streams import ENDPOINT, HOUR, T0, Stream, as_ops, piecewise
from tests.test_outcomes import ADVICE, BASE, FIXED, SAME_ADVICE, SPIKE, stream, useless_advice

LOG_KEYS = {"operation", "approach", "result", "context"}
MINUTE = timedelta(minutes=1)


class Site:
    """A data dir whose ops arrive as time goes on, and the runs made over it."""

    def __init__(self, settings: Settings, frame: pl.DataFrame) -> None:
        self.settings, self.frame = settings, frame
        self.written_to: datetime | None = None

    def arrive(self, until: datetime) -> None:
        """Write the ops with a time before `until` not written yet (spool, then ingestion)."""
        ts = pl.col("ts")
        new = self.frame.filter(ts < until)
        if self.written_to is not None:
            new = new.filter(ts >= self.written_to)
        ingest(self.settings, as_ops(new), batch=20_000)
        self.written_to = until

    def run(self, now: datetime) -> OutcomesReport:
        """What one scheduled run does, without Prefect: the ops up to `now` arrive, the run
        judges what is new (and commits), then posts what is pending."""
        self.arrive(now)
        report = outcomes.judge(self.settings, AssessParameters(), now=now)
        report.delivery = outcomes.post_pending(self.settings, report.to_post)
        return report

    def quiet(self, now: datetime) -> str | None:
        return outcomes.nothing_new(self.settings, AssessParameters(), now=now)

    def checkpoint(self) -> OutcomesCheckpoint:
        return OutcomesCheckpoint.model_validate_json(
            self.settings.layout.outcomes_state.read_bytes()
        )

    def waiting(self) -> set[str]:
        """The changes left to post: pending at the last commit, not acknowledged since."""
        return set(self.checkpoint().pending) - outcomes.posted_ids(self.settings)


def posts(gateway: FakeUpstream) -> list[dict[str, Any]]:
    return [seen.body for seen in gateway.seen("/log")]


def test_a_correction_that_works_posts_worked_once_and_a_rerun_nothing(
    gateway: FakeUpstream,
) -> None:
    site = Site(load_settings(), stream(1, [BASE, SPIKE, FIXED]))
    assert site.quiet(T0) == "nothing new: no op and no intervention recorded yet"

    early = site.run(T0 + 10 * MINUTE)  # the correction is in, nothing after it yet
    assert early.counts.opened == 1 and early.changes == [] and posts(gateway) == []
    assert site.quiet(T0 + 10 * MINUTE) is not None

    decided = site.run(T0 + 12 * HOUR)
    assert [(c.kind, c.verdict) for c in decided.changes] == [("verdict", "worked")]
    (body,) = posts(gateway)
    assert set(body) == LOG_KEYS
    assert body["operation"] == "outcome: correction worked" and body["approach"] == ADVICE
    assert body["result"].startswith("worked: failures ")
    assert site.waiting() == set()

    assert site.quiet(T0 + 12 * HOUR) is not None
    again = site.run(T0 + 12 * HOUR)
    assert again.changes == [] and again.to_post == [] and len(posts(gateway)) == 1

    # `observer outcomes --json` as a script calls it, light: no polars on its way.
    env = {**os.environ, "OBSERVER_DATA_DIR": str(site.settings.data_dir)}
    shown = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "observer.cli", "outcomes", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert re.search(r"\|\s+polars\b", shown.stderr) is None
    document = json.loads(shown.stdout)
    assert set(document) == {"interventions", "alerts"} and document["alerts"] == []
    (record,) = document["interventions"]
    assert record["kind"] == "correction" and record["verdict"] == "worked"
    assert record["key"] == {"sig_hash": "sigA", "endpoint": ENDPOINT}
    assert record["advice"] == ADVICE and record["at"].startswith("2026-05-04T12:00:00")
    assert record["before"]["failures"] > 150 and record["after"]["failures"] == 0
    assert {"attempts", "failures"} <= set(record["before"]) & set(record["after"])


def test_the_same_advice_three_times_without_effect_posts_one_alert_once(
    gateway: FakeUpstream,
) -> None:
    site = Site(load_settings(), useless_advice(*SAME_ADVICE))
    now = T0 + HOUR
    while now < T0 + 80 * HOUR:
        site.run(now)
        now += 6 * HOUR
    site.run(now)  # a rerun: nothing new

    operations = [body["operation"] for body in posts(gateway)]
    assert operations == ["outcome: correction did-not-work"] * 3 + [
        "outcome: repeated advice without effect (3)"
    ]
    alert = posts(gateway)[-1]
    assert ALERT_HINT in alert["result"] and alert["approach"] == SAME_ADVICE[0]
    (shown,) = OutcomesView.load(site.settings.layout.outcomes_view).alerts
    assert len(shown.interventions) == 3 and shown.kind == "repeated-advice"


def test_a_gateway_down_keeps_the_verdict_pending_until_it_is_back(
    gateway: FakeUpstream,
) -> None:
    site = Site(load_settings(), stream(1, [BASE, SPIKE, FIXED]))
    gateway.default("/log", Reply(503, {"error": "restarting"}))

    down = site.run(T0 + 12 * HOUR)
    assert down.delivery.gateway_down and down.delivery.count("failed") == 1
    (pending,) = site.waiting()
    assert site.quiet(T0 + 12 * HOUR) is None  # something waits to be posted
    still = site.run(T0 + 12 * HOUR + 5 * MINUTE)
    assert still.changes == [] and [c.id for c in still.to_post] == [pending]
    tried = len(posts(gateway))

    gateway.default("/log", Reply())
    back = site.run(T0 + 12 * HOUR + 10 * MINUTE)
    assert back.delivery.status == {pending: "posted"}
    site.run(T0 + 12 * HOUR + 15 * MINUTE)
    delivered = posts(gateway)[tried:]
    assert [body["operation"] for body in delivered] == ["outcome: correction worked"]
    assert site.waiting() == set()


CHILD_RUN = """
import sys
from datetime import datetime
from observer.pipelines import outcomes
from observer.pipelines.outcomes import AssessParameters
from observer.settings import load_settings

settings = load_settings()
report = outcomes.judge(settings, AssessParameters(), now=datetime.fromisoformat(sys.argv[1]))
outcomes.post_pending(settings, report.to_post)
"""


def test_a_run_killed_while_posting_posts_nothing_twice_but_the_post_in_flight(
    gateway: FakeUpstream, observer_env: dict[str, str]
) -> None:
    keys = ("sigA", "sigB", "sigC")
    built = piecewise(
        Stream(21), T0 - 7 * 24 * HOUR, T0 + 12 * HOUR, 120, {k: [BASE, SPIKE, FIXED] for k in keys}
    )
    for key in keys:
        built.correction(T0, key, f"{ADVICE} ({key})")
    site = Site(load_settings(), built.frame())
    now = T0 + 12 * HOUR
    site.arrive(now)
    # The gateway takes two posts, then holds the third without answering: the run is killed then.
    gateway.script("/log", Reply(), Reply(), Hang(60))
    env = {**os.environ, **observer_env, "OBSERVER_HTTP_TIMEOUT": "60"}
    child = subprocess.Popen([sys.executable, "-c", CHILD_RUN, now.isoformat()], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while len(posts(gateway)) < 3 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert len(posts(gateway)) == 3
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    first = [body["context"] for body in posts(gateway)]

    rerun = site.run(now)
    assert rerun.changes == [] and rerun.delivery.count("posted") == 1
    site.run(now + 5 * MINUTE)
    # The one post the gateway never answered is posted again; the two it took, never.
    assert [body["context"] for body in posts(gateway)] == [*first, first[2]]
    assert site.waiting() == set()


def test_a_diagnosis_delivered_by_analyze_errors_is_judged_and_posted(
    gateway: FakeUpstream, llm: FakeUpstream
) -> None:
    settings = load_settings()
    error = "staffer st-4411 not found in shard 7"
    now = datetime.now(UTC)
    before = piecewise(
        Stream(13),
        now - 7 * 24 * HOUR,
        now,
        120,
        {"sigA": [(now - 7 * 24 * HOUR, now, 0.02), (now - 8 * HOUR, now, 0.3)]},
        errors={"sigA": error},
    )
    ingest(settings, as_ops(before.frame()), batch=20_000)
    llm.default("/ai/generate", Reply(200, {"text": "The shard map is stale: reload it"}))
    params = AnalyzeParameters()
    selection = analysis.select(settings, params)
    diagnosis = analysis.diagnose(settings, selection, params)
    assert diagnosis.kind == "llm" and diagnosis.entry is not None
    with Upstreams(settings) as upstreams:
        upstreams.post_log(diagnosis.entry)
    assert analysis.commit(settings, selection, diagnosis) is None
    delivered_at = datetime.now(UTC)

    fixed = {"sigA": [(delivered_at, delivered_at + 12 * HOUR, 0.002)]}
    after = piecewise(Stream(14), delivered_at + 2 * MINUTE, delivered_at + 12 * HOUR, 120, fixed)
    site = Site(settings, after.frame())
    report = site.run(delivered_at + 12 * HOUR)

    assert report.recorded == 1 and report.counts.interventions == 1
    (record,) = OutcomesView.load(settings.layout.outcomes_view).interventions
    assert record.kind == "diagnosis" and record.verdict == "worked"
    assert record.key == {"endpoint": ENDPOINT, "pattern": normalise_error(error)}
    assert record.advice == "The shard map is stale: reload it"
    analysed, judged = posts(gateway)
    assert analysed["operation"].startswith("error_analysis: ")
    assert judged["operation"] == "outcome: diagnosis worked"

    # A day later the group fails again: its next diagnosis says how the last one fared.
    again_from, again_to = delivered_at + 25 * HOUR, delivered_at + 26 * HOUR
    spike = {"sigA": [(again_from, again_to, 0.3)]}
    later = piecewise(Stream(17), again_from, again_to, 120, spike, errors={"sigA": error})
    ingest(settings, as_ops(later.frame()), batch=20_000)
    selection = analysis.select(settings, params, now=again_to)
    next_one = analysis.diagnose(settings, selection, params)
    assert next_one.entry is not None
    text, outcome = next_one.entry.result.rsplit(" | ", 1)
    assert text == "The shard map is stale: reload it"
    assert outcome == "outcomes of earlier diagnoses of these groups: 1 worked"


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_posts_the_verdict_and_shows_it_on_its_run_page(gateway: FakeUpstream) -> None:
    corrected = datetime.now(UTC) - 12 * HOUR
    week = corrected - 7 * 24 * HOUR
    schedule = {
        "sigA": [
            (week, corrected + 12 * HOUR, 0.02),
            (corrected - 8 * HOUR, corrected, 0.3),
            (corrected, corrected + 12 * HOUR, 0.002),
        ]
    }
    built = piecewise(Stream(3), week, corrected + 12 * HOUR - MINUTE, 120, schedule)
    built.correction(corrected, "sigA", ADVICE)
    settings = load_settings()
    ingest(settings, as_ops(built.frame()), batch=20_000)

    state = assess_outcomes(AssessParameters(), return_state=True)
    assert state.is_completed(), state.message
    assert state.message.endswith("1 of 1 change(s) posted"), state.message
    (body,) = posts(gateway)
    assert body["operation"] == "outcome: correction worked"

    async def artifacts() -> dict[str, Any]:
        async with get_client() as client:
            latest = await client.read_latest_artifacts()
        wanted = {"assess-outcomes", "assess-outcomes-report"}
        return {
            a.key: json.loads(a.data) if a.type == "table" else a.data
            for a in latest
            if a.key in wanted
        }

    shown = asyncio.run(artifacts())
    (row,) = shown["assess-outcomes"]
    assert (row["kind"], row["verdict"], row["status"]) == (
        "correction",
        "worked",
        "watched after worked",
    )
    page = shown["assess-outcomes-report"]
    encoded = re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", page)
    assert encoded is not None, page
    svg = base64.b64decode(encoded[1]).decode()
    assert svg.startswith("<svg") and "<title>worked: sig_hash=sigA" in svg

    again = assess_outcomes(AssessParameters(), return_state=True)
    assert again.is_completed() and again.message.startswith("nothing new: "), again.message
    # What the worker asks before it starts a scheduled run: the same answer, without a process.
    assert ASSESS_OUTCOMES.nothing_new({"params": {}}) == again.message
    assert len(posts(gateway)) == 1


def test_a_playbook_entry_delivered_is_judged_and_the_next_entry_says_how_it_fared(
    gateway: FakeUpstream,
) -> None:
    settings = load_settings()
    now = datetime.now(UTC)
    rescue = "scenario:rescue"
    before = piecewise(
        Stream(15),
        now - 2 * 24 * HOUR,
        now,
        60,
        {"x": [(now - 2 * 24 * HOUR, now, 0.3)]},
        endpoint=rescue,
    )
    ingest(settings, as_ops(before.frame()), batch=20_000)
    (planned,) = playbooks.build_playbook(settings, ConsolidateParameters()).entries
    assert planned.action == "post" and playbooks.deliver(settings, planned) == "posted"
    delivered_at = datetime.now(UTC)

    fixed = {"x": [(delivered_at, delivered_at + 12 * HOUR, 0.03)]}
    after = piecewise(
        Stream(16), delivered_at + 2 * MINUTE, delivered_at + 12 * HOUR, 60, fixed, endpoint=rescue
    )
    Site(settings, after.frame()).run(delivered_at + 12 * HOUR)
    (record,) = OutcomesView.load(settings.layout.outcomes_view).interventions
    assert (record.kind, record.key, record.verdict) == ("playbook", {"endpoint": rescue}, "worked")
    assert record.advice == planned.entry.approach

    (again,) = playbooks.build_playbook(settings, ConsolidateParameters()).entries
    original, *evidence = again.entry.result.split(" | ")
    assert re.fullmatch(r"avg_duration=\d+ms, \d+ successes", original), again.entry.result
    assert evidence[-1] == "outcomes of earlier entries: 1 worked"
    assert posts(gateway)[-1]["operation"] == "outcome: playbook worked"
