"""Outcomes: how often the rule is wrong, how soon it is right, and what a run costs.

`python -m bench outcomes` (500 null streams per world, 1,000 open interventions over 7 and 14
days at 100k ops a day) or `--quick` (50 streams, 200 interventions at 20k ops a day);
`--streams=N`, `--runs=N`.

1. **Placebo.** Spike-triggered corrections that do nothing (`tests/streams.spiky_stream`): an
   endpoint at 60–240 attempts an hour, five other signatures that spike (5–15× their rate) and
   fall back by themselves, the key's spike prompting a correction 1–8 hours in and running its
   own course. Two worlds: spikes of 2–8 hours (the key's 2–12), and spikes of 12–36 hours. The
   share judged `worked` (or `regressed`, which needs `worked` first) against the rule's ALPHA.
   Baseline, on the same streams: a naive before/after, the pre-window's rate taken as known and
   checked after every attempt (one-sided binomial p < 0.05), as the issue measured it.
2. **Real effects.** The same streams, the correction taking the key to 20% of its baseline rate
   from its time on: the share found `worked` within 40 and within 160 attempts after it (the
   deciding look's exposure), and by the window's end.
3. **A run's cost.** Ops at 100k a day over 20 endpoints (2,000 failure signatures, 10% failures),
   day-partitioned Parquet files read back by a reader of `[start, end)` that returns only
   `LOOKBACK_COLUMNS` (as the history table's reader can), and 1,300 corrections over the last 72
   hours on random signatures (about 1,000 of them still open at the end): the state is built by
   running the engine hour by hour (a catch-up, timed for information), then each measured run
   loads the state from JSON, folds in the next 5 minutes (about 350 ops, with one new correction
   every other run), marks its changes posted and saves the state. Runs happen in fresh processes,
   two at a time, alternating between the two history sizes. Time is the median per run, also
   apart for runs with and without a new correction; memory is each process's peak RSS during its
   runs (VmHWM, reset before them) beside its RSS before them. The same with 14 days of history:
   the target is ≤ 1.5× the 7-day time.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from bench.common import Figure, ratio_line
from observer.outcomes import OutcomeRule, OutcomeState, assess
from observer.outcomes.frames import CORRECTION_SOURCE, LOOKBACK_COLUMNS, OPS_SCHEMA
from observer.outcomes.stats import binomial_cdf
from tests.streams import T0, run, spiky_stream

ROOT = Path(__file__).resolve().parent.parent
HOUR = timedelta(hours=1)
RULE = OutcomeRule()
TARGET_GROWTH = 1.5
NAIVE_ATTEMPTS = 2000  # the naive baseline checks at most this many attempts after


# ── 1 and 2: the rule's errors and power ────────────────────────────────────────────────────────


@dataclass
class Judged:
    verdicts: collections.Counter[str]
    within_40: int = 0
    within_160: int = 0
    naive_worked: int = 0
    seconds: float = 0.0

    @property
    def worked(self) -> int:
        return self.verdicts["worked"] + self.verdicts["regressed"]


def judge_streams(count: int, effect: float | None, *, lasting: bool) -> Judged:
    judged = Judged(collections.Counter())
    started = time.perf_counter()
    for seed in range(count):
        spiky = spiky_stream(seed, effect, lasting=lasting)
        outcome = run(spiky.frame, start=T0 - HOUR, until=T0 + 73 * HOUR, every=74 * HOUR)
        (record,) = outcome.state.records()
        judged.verdicts[record.verdict] += 1
        if record.verdict in ("worked", "regressed"):
            judged.within_40 += record.after.attempts <= 40
            judged.within_160 += record.after.attempts <= 160
        judged.naive_worked += naive_worked(spiky.frame)
    judged.seconds = time.perf_counter() - started
    return judged


def naive_worked(frame: pl.DataFrame) -> bool:
    """Before/after with the pre-window's rate taken as known, checked after every attempt."""
    attempts = frame.filter(pl.col("source") != CORRECTION_SOURCE)
    failed = (pl.col("sig_hash") == "K") & ~pl.col("success")
    before = attempts.filter((pl.col("ts") >= T0 - RULE.pre) & (pl.col("ts") < T0))
    rate = before.select(failed.mean()).item()
    after = attempts.filter(pl.col("ts") >= T0 + RULE.lag).head(NAIVE_ATTEMPTS)
    failures = 0
    for n, bad in enumerate(after.select(failed).to_series().to_list(), start=1):
        failures += bool(bad)
        # At or above the expected count the p-value is at least about 1/2: no need to compute it.
        if failures < n * rate and binomial_cdf(failures, n, rate) < 0.05:
            return True
    return False


def errors_and_power(streams: int) -> bool:
    effects = max(streams // 2, 1)
    ok = True
    for lasting, world in ((False, "spikes of 2–8 h"), (True, "spikes of 12–36 h")):
        placebo = judge_streams(streams, None, lasting=lasting)
        share = placebo.worked / streams
        print(
            f"placebo, {world}: worked {placebo.worked}/{streams} = {share:.1%}"
            f" (ALPHA {RULE.alpha:.0%}); naive before/after {placebo.naive_worked}/{streams}"
            f" = {placebo.naive_worked / streams:.1%}; verdicts {dict(placebo.verdicts)}"
            f" ({placebo.seconds:.0f} s)",
            flush=True,
        )
        ok = ok and share <= RULE.alpha
        real = judge_streams(effects, 0.2, lasting=lasting)
        print(
            f"real effect (to 20% of baseline), {world}: found within 40 attempts"
            f" {real.within_40 / effects:.1%}, within 160 {real.within_160 / effects:.1%},"
            f" by the window's end {real.worked / effects:.1%} (n={effects});"
            f" verdicts {dict(real.verdicts)} ({real.seconds:.0f} s)",
            flush=True,
        )
    return ok


# ── 3: a run's cost ─────────────────────────────────────────────────────────────────────────────

ENDPOINTS = 20
SIGNATURES = 100  # per endpoint


def ops_between(first: int, count: int, start: datetime, per_day: int) -> pl.DataFrame:
    """Ops number `first` … `first + count − 1` of a stream from `start`: evenly spaced,
    pseudo-random by hashing."""
    step = 86_400_000_000 // per_day
    index = pl.int_range(first, first + count, eager=True).alias("i")
    frame = pl.DataFrame(index).with_columns(
        (pl.col("i").hash(1) % ENDPOINTS).alias("e"),
        (pl.col("i").hash(2) % 1000 < 100).alias("failed"),
        (pl.col("i").hash(3) % SIGNATURES).alias("s"),
    )
    endpoint = pl.lit("/tool/") + pl.col("e").cast(pl.String)
    sig = pl.lit("sig-") + pl.col("e").cast(pl.String) + "-" + pl.col("s").cast(pl.String)
    at = pl.lit(start) + pl.duration(microseconds=pl.col("i") * step)
    return frame.select(
        pl.col("i").cast(pl.Int64).alias("pos"),
        at.cast(pl.Datetime("us", "UTC")).alias("ts"),
        endpoint.alias("endpoint"),
        pl.lit("scenario").alias("source"),
        (~pl.col("failed")).alias("success"),
        pl.when(pl.col("failed")).then(sig).alias("sig_hash"),
        pl.lit(None, pl.String).alias("task_class"),
        pl.lit(None, pl.String).alias("correction"),
        pl.when(pl.col("failed")).then(sig + " failed").alias("error"),
        pl.when(pl.col("failed"))
        .then(pl.lit("failed"))
        .otherwise(pl.lit("ok"))
        .alias("output_summary"),
        (endpoint + " call").alias("input_summary"),
    )


def with_corrections(
    ops: pl.DataFrame, since: datetime, every: int, seed: int, *, middle: bool = False
) -> pl.DataFrame:
    """About every `every`-th op after `since` (or, with `middle`, exactly the middle one) is
    replaced by a correction on a random signature."""
    picked = (
        pl.col("pos") == ops["pos"][ops.height // 2]
        if middle
        else (pl.col("ts") >= since) & (pl.col("pos").hash(seed) % every == 0)
    )
    e, s = pl.col("pos").hash(seed + 1) % ENDPOINTS, pl.col("pos").hash(seed + 2) % SIGNATURES
    texts = pl.concat_str(
        pl.lit("retry the fill "), (pl.col("pos") % 7).cast(pl.String), pl.lit(" times first")
    )
    return ops.with_columns(
        pl.when(picked).then(pl.lit(CORRECTION_SOURCE)).otherwise(pl.col("source")).alias("source"),
        pl.when(picked)
        .then(pl.lit("sig-") + e.cast(pl.String) + "-" + s.cast(pl.String))
        .otherwise(pl.col("sig_hash"))
        .alias("sig_hash"),
        pl.when(picked).then(True).otherwise(pl.col("success")).alias("success"),
        pl.when(picked).then(texts).otherwise(pl.col("correction")).alias("correction"),
        pl.when(picked)
        .then(pl.lit("overseer:gpt-oss:120b"))
        .otherwise(pl.col("endpoint"))
        .alias("endpoint"),
    ).select(list(OPS_SCHEMA))


class DayFiles:
    """Ops kept as one Parquet file per day, read back for `[start, end)` (the reader's shape)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, ops: pl.DataFrame) -> None:
        for (day,), part in ops.group_by(pl.col("ts").dt.date(), maintain_order=True):
            path = self.directory / f"{day}.parquet"
            if path.exists():
                part = pl.concat([pl.read_parquet(path), part])
            part.write_parquet(path)

    def read(self, start: datetime, end: datetime) -> pl.DataFrame:
        days = []
        day = start.date()
        while day <= end.date():
            path = self.directory / f"{day}.parquet"
            if path.exists():  # only what the engine reads of a look-back, as a reader would
                days.append(pl.read_parquet(path, columns=list(LOOKBACK_COLUMNS)))
            day += timedelta(days=1)
        frames = (
            pl.concat(days) if days else pl.DataFrame(schema=OPS_SCHEMA).select(LOOKBACK_COLUMNS)
        )
        return frames.filter((pl.col("ts") >= start) & (pl.col("ts") < end))


def prepare(workdir: Path, days: int, per_day: int, interventions: int) -> dict[str, object]:
    """History of `days` ending at NOW, with `interventions` corrections in its last 72 h; the
    state built hour by hour; the measured runs' ops written next to it."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    start = now - timedelta(days=days)
    files = DayFiles(workdir / "days")
    total = days * per_day
    every = max(1, (72 * per_day // 24) // interventions)
    quiet_until = now - timedelta(hours=73)
    quiet = int((quiet_until - start) / timedelta(days=1) * per_day)
    state = OutcomeState()
    first = ops_between(0, quiet, start, per_day)
    files.write(first)
    state = posted(assess(state, first, files.read, rule=RULE, now=quiet_until).state)
    hour = per_day // 24
    position = quiet
    while position < total:
        batch = with_corrections(
            ops_between(position, min(hour, total - position), start, per_day),
            quiet_until,
            every,
            7,
        )
        files.write(batch)
        now = batch["ts"].max() + timedelta(seconds=1)
        state = posted(assess(state, batch, files.read, rule=RULE, now=now).state)
        position += batch.height
    (workdir / "state.json").write_text(state.model_dump_json())
    runs_dir = workdir / "runs"
    runs_dir.mkdir()
    batch_size = per_day // (24 * 12)  # five minutes
    for n in range(12):
        batch = ops_between(position, batch_size, start, per_day)
        if n % 2 == 0:  # one new correction every other run
            batch = with_corrections(batch, start, batch_size, 11 + n, middle=True)
        batch.write_parquet(runs_dir / f"{n:02d}.parquet")
        position += batch_size
    return {
        "open": len(state.open),
        "done": len(state.done),
        "state_bytes": (workdir / "state.json").stat().st_size,
        "history_ops": total,
    }


def posted(state: OutcomeState) -> OutcomeState:
    """The state once the flow has posted its pending changes (each acknowledged)."""
    for change in list(state.pending):
        state.acknowledge(change.id)
    return state


CHILD = r"""
import json, sys, time
from pathlib import Path
from datetime import timedelta
import polars as pl
from bench.outcomes import DayFiles, RULE, posted
from observer.outcomes import OutcomeState, assess

def status(name):
    for line in open("/proc/self/status"):
        if line.startswith(name):
            return int(line.split()[1]) / 1024

workdir, first, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
files = DayFiles(workdir / "days")
paths = sorted((workdir / "runs").glob("*.parquet"))[first : first + count]
batches = [pl.read_parquet(p) for p in paths]
rss_before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # resets VmHWM to the current RSS
runs = []
for batch in batches:
    started = time.perf_counter()
    state = OutcomeState.from_json((workdir / "state.json").read_bytes())
    now = batch["ts"].max() + timedelta(seconds=1)
    result = assess(state, batch, files.read, rule=RULE, now=now)
    (workdir / "state.json").write_text(posted(result.state).model_dump_json())
    runs.append({"seconds": time.perf_counter() - started, "new": result.counts.interventions,
                 "read_rows": sum(w.rows for w in result.counts.windows)})
print(json.dumps({"runs": runs, "peak_mb": status("VmHWM:"), "rss_before_mb": rss_before,
                  "open": len(result.state.open)}))
"""
#: Runs per child process; children of the two history sizes alternate.
RUNS_PER_CHILD = 2


def cost(workdir: Path, first: int, count: int) -> dict[str, Any]:
    """`count` runs from the `first` measured batch on, in a fresh process."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(workdir), str(first), str(count)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout)


def run_cost(per_day: int, interventions: int, runs: int) -> bool:
    scratch = Path(tempfile.mkdtemp(prefix="observer-bench-outcomes-"))
    children: dict[int, list[dict[str, Any]]] = {7: [], 14: []}
    try:
        for days in children:
            started = time.perf_counter()
            built = prepare(scratch / f"{days}d", days, per_day, interventions)
            print(
                f"{days} days, {built['history_ops']:,} ops: state built in"
                f" {time.perf_counter() - started:.0f} s ({built['open']} open, {built['done']}"
                f" finished, {built['state_bytes'] / 1e6:.1f} MB of JSON)",
                flush=True,
            )
        for first in range(0, runs, RUNS_PER_CHILD):  # alternated: drift hits both sizes
            for days, results in children.items():
                results.append(cost(scratch / f"{days}d", first, RUNS_PER_CHILD))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures = {}
    for days, results in children.items():
        every = [r for child in results for r in child["runs"]]
        figures[days] = Figure(f"run, {days} days of history", [r["seconds"] for r in every], "s")
        print(figures[days].line())
        for label, new in (("with a new correction", True), ("without", False)):
            chosen = [r["seconds"] for r in every if bool(r["new"]) == new]
            if chosen:
                print(Figure(f"  {label}", chosen, "s").line())
        print(
            f"  {results[-1]['open']} open interventions; peak RSS"
            f" {max(c['peak_mb'] for c in results):.0f} MB (RSS before the runs"
            f" {max(c['rss_before_mb'] for c in results):.0f} MB); look-back rows read"
            f" {sum(r['read_rows'] for r in every):,} over {len(every)} runs"
        )
    print(ratio_line("14 days / 7 days, a run", figures[14], figures[7]))
    growth = figures[14].median / figures[7].median
    print(f"growth {growth:.2f}× (target ≤ {TARGET_GROWTH}×)")
    return growth <= TARGET_GROWTH


def main(options: list[str]) -> int:
    quick = "--quick" in options
    streams = _option(options, "--streams", 50 if quick else 500)
    runs = _option(options, "--runs", 6 if quick else 12)
    per_day, interventions = (20_000, 260) if quick else (100_000, 1_300)
    ok = errors_and_power(streams)
    ok = run_cost(per_day, interventions, runs) and ok
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def _option(options: list[str], name: str, default: int) -> int:
    return next((int(o.split("=", 1)[1]) for o in options if o.startswith(f"{name}=")), default)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
