"""Tail a large corrections file: throughput and peak memory against a plain sequential read.

`python -m bench tail` (1 GB) or `python -m bench tail --quick` (~100 MB); `--size-mb=N`, `--runs=N`.
Each measurement runs in a fresh subprocess, which reports its own elapsed time and peak RSS (VmHWM),
so the figures are those of the work alone. The baseline reads the same file in 1 MiB chunks and
counts its lines; the tailer turns every row into an op and records it durably (spool + fsync) from
an empty checkpoint. Runs alternate, and the medians are compared as ratios. Flat memory shows as
the tailer's peak RSS staying near that of a process that only imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Figure, ratio_line

ROOT = Path(__file__).resolve().parent.parent

_PEAK = """
def _peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

CHILDREN = {
    "baseline": _PEAK
    + """
import json, sys, time
started = time.perf_counter()
lines = 0
with open(sys.argv[1], "rb") as handle:
    while chunk := handle.read(1024 * 1024):
        lines += chunk.count(b"\\n")
print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": _peak_mb(), "rows": lines}))
""",
    "idle": _PEAK
    + """
import json
from observer.pipelines.corrections import tail_corrections
from observer.settings import load_settings
load_settings()
print(json.dumps({"seconds": 0.0, "peak_mb": _peak_mb(), "rows": 0}))
""",
    "tailer": _PEAK
    + """
import json, time
from observer.pipelines.corrections import tail_corrections
from observer.settings import load_settings
settings = load_settings()
started = time.perf_counter()
report = tail_corrections(settings, max_bytes=1 << 62)
seconds = time.perf_counter() - started
assert report.lag_bytes == 0 and report.quarantined == 0, report
print(json.dumps({"seconds": seconds, "peak_mb": _peak_mb(), "rows": report.recorded}))
""",
}


def generate(path: Path, size_bytes: int) -> int:
    """Write realistic, distinct corrections rows until `size_bytes`; returns the row count."""
    rows = 0
    written = 0
    advice = "Re-check the shift roster before filling; the drift came from stale availability. "
    with open(path, "wb") as handle:
        while written < size_bytes:
            block = []
            for n in range(rows, rows + 10_000):
                row = {
                    "created_at": f"2026-04-23T10:{n // 60000 % 60:02d}:{n // 1000 % 60:02d}.{n % 1000:03d}Z",
                    "model": "gpt-oss:120b",
                    "task_class": f"staffing.fill.{n % 17}",
                    "reason": "drift",
                    "correction": f"#{n} {advice * (1 + n % 3)}",
                    "sig_hash": f"{n * 2654435761 % 2**32:08x}",
                    "applied_at_turn": n % 9,
                    "usage": {"latency_ms": 400 + n % 800, "tokens": 120},
                }
                block.append(json.dumps(row, separators=(",", ":")))
            data = ("\n".join(block) + "\n").encode()
            handle.write(data)
            written += len(data)
            rows += 10_000
    return rows


def measure(kind: str, corrections: Path, workdir: Path) -> dict[str, float]:
    """One run of a child in its own data dir (removed afterwards)."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    env = {
        **os.environ,
        "OBSERVER_DATA_DIR": str(data_dir),
        "OVERSEER_CORRECTIONS_PATH": str(corrections),
        "PYTHONPATH": str(ROOT),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILDREN[kind], str(corrections)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _option(options: list[str], name: str, default: int) -> int:
    for option in options:
        if option.startswith(f"--{name}="):
            return int(option.split("=", 1)[1])
    return default


def main(options: list[str]) -> int:
    size_mb = _option(options, "size-mb", 100 if "--quick" in options else 1024)
    runs = max(3, _option(options, "runs", 3))
    workdir = Path(tempfile.mkdtemp(prefix="observer-bench-tail-"))
    try:
        corrections = workdir / "overseer_corrections.jsonl"
        rows = generate(corrections, size_mb * 1024 * 1024)
        size = corrections.stat().st_size
        print(f"corrections file: {size / 1e6:.1f} MB, {rows} rows; {runs} runs each", flush=True)
        results: dict[str, list[dict[str, float]]] = {"baseline": [], "tailer": [], "idle": []}
        for _ in range(runs):
            for kind in results:
                result = measure(kind, corrections, workdir)
                if kind != "idle" and result["rows"] != rows:
                    print(f"{kind} saw {result['rows']} rows, expected {rows}", file=sys.stderr)
                    return 1
                results[kind].append(result)
        figures = {
            kind: (
                Figure(f"{kind}: throughput", [size / 1e6 / r["seconds"] for r in rs], "MB/s")
                if kind != "idle"
                else None,
                Figure(f"{kind}: peak RSS", [r["peak_mb"] for r in rs], "MB"),
            )
            for kind, rs in results.items()
        }
        for speed, peak in figures.values():
            if speed is not None:
                print(speed.line())
            print(peak.line())
        tail_speed, tail_peak = figures["tailer"]
        base_speed, base_peak = figures["baseline"]
        assert tail_speed is not None and base_speed is not None
        print(ratio_line("throughput tailer / plain read", tail_speed, base_speed))
        print(ratio_line("peak RSS tailer / plain read", tail_peak, base_peak))
        print(ratio_line("peak RSS tailer / import only", tail_peak, figures["idle"][1]))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
