"""analyze-errors: a scheduled (since-last) run's time on ops.jsonl of 100k, 1M and 10M lines.

Each file holds old traffic (5% failures, already analysed: the watermark sits at its end) plus 100
new failures. One measured run is the library's steps of a flow run: select (read past the
watermark, parse, group), diagnose (prompt, `POST /ai/generate` to a fake LLM on loopback), post
(`POST /log` to a fake gateway) and commit (state file). The state and cache are reset before
each run, so every run pays the LLM. Target: ≤ 1 s at 1M lines and ≤ 1.5× that at 10M.

Baselines, measured in the same invocation: a plain read of the new bytes (the floor), and a full
scan of the file for failures with polars (what reading without a watermark would cost).
`--quick` skips the 10M file. Files live in a temporary directory, deleted afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bench.common import Figure, ratio_line, repeat, stopwatch
from observer.files import save_state
from observer.history.stream import StreamMark
from observer.ops import Op
from observer.pipelines import analysis
from observer.pipelines.analysis import AnalysisState, AnalyzeParameters
from observer.pipelines.failures import extract_failures
from observer.settings import Settings, load_settings
from observer.upstream import Upstreams
from tests.fakes import FakeUpstream, Reply

SIZES = (100_000, 1_000_000, 10_000_000)
NEW_FAILURES = 100
BLOCK_LINES = 10_000
RUNS = 7
TARGET_1M_SECONDS = 1.0
TARGET_GROWTH = 1.5


def _op(n: int, *, new: bool = False) -> Op:
    failed = new or n % 20 == 0
    error = f"staffer {n} not found in shard {n % 7} after {n % 5}s" if failed else None
    fields = {
        "timestamp": f"2026-04-23T10:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z",
        "endpoint": f"scenario:{'fill' if n % 3 else 'rescue'}",
        "input_summary": f"fill welder×{n % 9} in Austin, TX",
        "success": not failed,
        "duration_ms": n % 1500,
        "output_summary": error or "filled",
        "source": "scenario",
        "staffer_id": f"st-{n % 9973}",
        "rescue_attempted": False,
        "rescue_succeeded": False,
    }
    if error:
        fields["error"] = error
    return Op(**fields)


def build_file(path: Path, lines: int) -> int:
    """Write `lines` old ops, then the new failures; return the offset where the new ones start."""
    block = b"".join(_op(n).to_line() + b"\n" for n in range(BLOCK_LINES))
    with open(path, "wb") as handle:
        for _ in range(lines // BLOCK_LINES):
            handle.write(block)
        offset = handle.tell()
        handle.write(b"".join(_op(n, new=True).to_line() + b"\n" for n in range(NEW_FAILURES)))
    return offset


def scheduled_run(settings: Settings, state: bytes) -> float:
    """One since-last analysis from a reset state, timed from reading to the committed state."""
    settings.layout.analysis_state.write_bytes(state)
    settings.layout.analysis_cache.unlink(missing_ok=True)

    def run() -> None:
        query = AnalyzeParameters()
        selection = analysis.select(settings, query)
        report = analysis.diagnose(settings, selection, query)
        assert report.kind == "llm" and report.entry is not None, report.message
        with Upstreams(settings) as upstreams:
            upstreams.post_log(report.entry)
        analysis.commit(settings, selection, report)
        assert selection.failures == NEW_FAILURES, selection.failures

    return stopwatch(run)


def select_only(settings: Settings, state: bytes) -> float:
    """The part of a run whose cost could depend on the file: read past the watermark and group."""
    settings.layout.analysis_state.write_bytes(state)
    return stopwatch(lambda: analysis.select(settings, AnalyzeParameters()))


def read_new_bytes(path: Path, offset: int) -> float:
    def run() -> None:
        with open(path, "rb") as handle:
            handle.seek(offset)
            handle.read()

    return stopwatch(run)


def full_scan(path: Path) -> float:
    lines = pl.scan_csv(
        path, has_header=False, separator="\t", quote_char=None, schema={"line": pl.String}
    )
    return stopwatch(lambda: extract_failures(lines))


@dataclass
class Subject:
    """One ops file under test, with its own data dir and the state that puts the watermark."""

    size: int
    settings: Settings
    offset: int
    state: bytes

    @property
    def label(self) -> str:
        size = self.size
        return f"{size // 1000}k lines" if size < 1_000_000 else f"{size // 1_000_000}M lines"


def prepare(size: int, workdir: Path, llm: FakeUpstream, gateway: FakeUpstream) -> Subject:
    settings = load_settings(
        data_dir=workdir / str(size), lakehouse_url=llm.url, gateway_url=gateway.url
    )
    settings.layout.ops_path.parent.mkdir(parents=True, exist_ok=True)
    offset = build_file(settings.layout.ops_path, size)
    save_state(settings.layout.analysis_state, AnalysisState(watermark=StreamMark(position=offset)))
    return Subject(size, settings, offset, settings.layout.analysis_state.read_bytes())


def measure(subjects: list[Subject]) -> dict[int, list[Figure]]:
    """Runs interleaved across the files (round robin), so disk noise hits every size alike."""
    figures = {
        s.size: [
            Figure(f"scheduled run, {s.label}", [], "s"),
            Figure(f"  of which select (read + group), {s.label}", [], "s"),
            Figure(f"baseline: read new bytes, {s.label}", [], "s"),
        ]
        for s in subjects
    }
    for _ in range(RUNS):
        for s in subjects:
            run, select_step, new_bytes = figures[s.size]
            run.values.append(scheduled_run(s.settings, s.state))
            select_step.values.append(select_only(s.settings, s.state))
            new_bytes.values.append(read_new_bytes(s.settings.layout.ops_path, s.offset))
    for s in subjects:
        figures[s.size].append(
            repeat(
                f"baseline: full polars scan, {s.label}",
                3,
                lambda s=s: full_scan(s.settings.layout.ops_path),
            )
        )
    return figures


def main(options: list[str]) -> int:
    sizes = SIZES[:2] if "--quick" in options else SIZES
    workdir = Path(tempfile.mkdtemp(prefix="observer-bench-analyze-"))
    llm, gateway = FakeUpstream(), FakeUpstream()
    llm.default("/ai/generate", Reply(200, {"text": "Check the shard map before filling."}))
    try:
        subjects = [prepare(size, workdir, llm, gateway) for size in sizes]
        os.sync()  # the new files' dirty pages would otherwise slow the runs' fsyncs
        results = measure(subjects)
        for figures in results.values():
            for figure in figures:
                print(figure.line(), flush=True)
    finally:
        llm.close()
        gateway.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    for size, (run, _, new_bytes, scan) in results.items():
        print(ratio_line(f"{size:,} lines: run / read new bytes", run, new_bytes))
        print(ratio_line(f"{size:,} lines: run / full scan", run, scan))
    ok = results[1_000_000][0].median <= TARGET_1M_SECONDS
    print(f"1M lines: {results[1_000_000][0].median:.3f} s (target ≤ {TARGET_1M_SECONDS} s)")
    if 10_000_000 in results:
        growth = results[10_000_000][0].median / results[1_000_000][0].median
        print(ratio_line("10M / 1M scheduled run", results[10_000_000][0], results[1_000_000][0]))
        print(ratio_line("10M / 1M select step", results[10_000_000][1], results[1_000_000][1]))
        ok = ok and growth <= TARGET_GROWTH
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1
