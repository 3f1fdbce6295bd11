"""Streams of ops for the history tests: known ops over several days, ingested through the real
spool and ingestion (small hot files, so that seals happen), then committed to the table."""

from __future__ import annotations

import random
from datetime import date

from observer.intake import record_ops
from observer.ops import Op
from observer.pipelines import history
from observer.pipelines.history import CompactParameters, CompactReport
from observer.pipelines.ingest import drain_spool
from observer.settings import Settings

ENDPOINTS = ("scenario:fill", "scenario:rescue", "/query", "__proto__")
ERRORS = (
    "staffer st-{n} not found in shard {m}",
    "timeout after {n} ms",
    "upstream 503 from http://10.0.0.{m}/lakehouse",
)


def ops_over_days(days: list[str], per_day: int, seed: int) -> list[Op]:
    """`per_day` ops on each UTC day, in time order; about a quarter fail."""
    rng = random.Random(seed)
    ops = []
    for day in days:
        for n in range(per_day):
            seconds = n * 86_000 // per_day
            ok = rng.random() >= 0.25
            fields: dict[str, object] = {
                "timestamp": f"{day}T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
                f"{seconds % 60:02d}.{rng.randrange(1000):03d}Z",
                "endpoint": rng.choice(ENDPOINTS),
                "input_summary": f"fill welder×{n % 7} in Toledo, OH — {n}",
                "success": ok,
                "duration_ms": rng.randrange(1, 4000),
                "output_summary": "filled" if ok else "failed",
                "source": rng.choice(("scenario", "mcp")),
                "count": n % 9,
            }
            if not ok:
                fields["error"] = rng.choice(ERRORS).format(n=rng.randrange(999), m=n % 5)
            ops.append(Op(**fields))
    return ops


def stream_bytes(ops: list[Op]) -> bytes:
    """The ops.jsonl that one never-sealed file would hold for these ops."""
    return b"".join(op.to_line() + b"\n" for op in ops)


def ingest(settings: Settings, ops: list[Op], batch: int = 40) -> None:
    """Record the ops through the spool and ingest them, `batch` at a time (each ingestion may
    seal ops.jsonl when it passed OBSERVER_HOT_MAX_BYTES)."""
    for start in range(0, len(ops), batch):
        record_ops(settings, [(None, op) for op in ops[start : start + batch]])
        drain_spool(settings)


def compact(settings: Settings, today: date | None = None, **params: object) -> CompactReport:
    """What one compact-history run does, step by step, without Prefect."""
    parameters = CompactParameters(**params)
    report = CompactReport(sealed=history.seal_hot_file(settings) if parameters.seal else None)
    history.commit_segments(settings, parameters, report)
    history.keep_table(settings, parameters, report, today=today)
    return report
