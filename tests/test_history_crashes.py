"""kill -9 in the middle of sealing ops.jsonl and of committing to the history table, then a rerun:
every op exactly once in hot + history, and the export equal to the uninterrupted byte stream.

The crashing processes are real: a child runs the real ingestion or compaction and is killed
with SIGKILL, either at an exact point (a wrapper around the call that seals or commits kills
its own process right after the call returns) or at a random moment."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from observer.history.reader import OpsReader
from observer.history.stream import sealed_segments
from observer.intake import record_ops
from observer.intake.checkpoint import load_checkpoint
from observer.pipelines.history import seal_hot_file
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings, load_settings
from tests.history_streams import compact, ops_over_days, stream_bytes

ROOT = Path(__file__).resolve().parent.parent
DAYS = ["2026-12-01", "2026-12-02"]

#: Ingests the spool in small batches; with argv[1] = N, kills itself right after its N-th seal
#: renamed ops.jsonl (before the seal's checkpoint).
INGEST_CHILD = """
import os, signal, sys
from observer.pipelines.history import seal_hot_file
from observer.pipelines.ingest import drain_spool
from observer.settings import load_settings
kill_at = int(sys.argv[1])
real_rename, seals = os.rename, 0
def rename(source, target):
    global seals
    real_rename(source, target)
    seals += "segments" in str(target)
    if seals == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
drain_spool(load_settings(), batch_bytes=3000)
"""

#: Commits the sealed segments in small commits; with argv[1] = N, kills itself right after its
#: N-th commit landed in the table (before the run knows it did).
COMPACT_CHILD = """
import os, signal, sys
from observer.history.table import HistoryTable
from tests.history_streams import compact
from observer.settings import load_settings
kill_at = int(sys.argv[1])
real_append, commits = HistoryTable.append, 0
def append(self, *args, **kwargs):
    global commits
    table = real_append(self, *args, **kwargs)
    commits += 1
    if commits == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return table
HistoryTable.append = append
compact(load_settings(), seal=False, upkeep=False, max_commit_bytes=4096)
"""


@pytest.fixture
def crashing(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Settings:
    monkeypatch.setenv("OBSERVER_HOT_MAX_BYTES", "5000")
    return load_settings()


def child(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def assert_exactly_once(settings: Settings, expected: bytes, ops: int) -> None:
    with OpsReader(settings) as reader:
        assert b"".join(reader.export()) == expected
        assert reader.end == len(expected)
    table = pl.scan_delta(settings.history_location).select("stream", "segment", "offset")
    rows = table.collect()
    assert rows.n_unique() == rows.height  # no row twice
    checkpoint = load_checkpoint(settings)
    assert checkpoint.ingested_total == ops
    assert checkpoint.ops_end == len(expected)


def test_kill_9_at_each_seal_then_a_rerun_loses_and_doubles_nothing(crashing: Settings) -> None:
    ops = ops_over_days(DAYS, 300, seed=21)
    record_ops(crashing, [(None, op) for op in ops])
    for kill_at in (1, 2, 3, 5, 8):
        process = child(INGEST_CHILD, str(kill_at))
        _, err = process.communicate(timeout=120)
        assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
        # The seal renamed ops.jsonl and died before its checkpoint: ops.jsonl is missing.
        assert not crashing.layout.ops_path.exists()
    drain_spool(crashing)
    assert len(sealed_segments(crashing.layout)) >= 8
    compact(crashing)
    assert_exactly_once(crashing, stream_bytes(ops), len(ops))


def test_kill_9_at_random_moments_of_ingestion_and_compaction(crashing: Settings) -> None:
    rng = random.Random(22)
    ops = ops_over_days(DAYS, 400, seed=23)
    record_ops(crashing, [(None, op) for op in ops])
    for _ in range(4):
        process = child(INGEST_CHILD, "0")
        time.sleep(rng.uniform(0.3, 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait(60)
    drain_spool(crashing)
    for _ in range(3):
        process = child(COMPACT_CHILD, "0")
        time.sleep(rng.uniform(0.5, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait(60)
    compact(crashing)
    assert_exactly_once(crashing, stream_bytes(ops), len(ops))


def test_kill_9_right_after_a_commit_landed_then_a_rerun_commits_the_rest_once(
    crashing: Settings,
) -> None:
    ops = ops_over_days(DAYS, 300, seed=24)
    record_ops(crashing, [(None, op) for op in ops])
    drain_spool(crashing, batch_bytes=3000)
    seal_hot_file(crashing)
    for kill_at in (1, 3, 2):
        process = child(COMPACT_CHILD, str(kill_at))
        _, err = process.communicate(timeout=120)
        assert process.returncode == -signal.SIGKILL, err.decode()[-2000:]
    rerun = compact(crashing, upkeep=False, max_commit_bytes=4096)
    assert rerun.segments_waiting == 0
    assert_exactly_once(crashing, stream_bytes(ops), len(ops))
