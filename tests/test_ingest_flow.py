"""The ingestion flow against a real Prefect server: spool → ops.jsonl, once, in order."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from flows.ingest_events import ingest_events
from observer.intake import record_ops
from observer.ops import Op
from observer.pipelines.ingest import IngestParameters
from observer.settings import Settings

pytestmark = pytest.mark.usefixtures("prefect_server")


def _op(n: int) -> Op:
    return Op(
        timestamp=f"2026-04-23T10:00:00.{n:03d}Z",
        endpoint="scenario:fill",
        input_summary=f"op {n}",
        success=n % 2 == 0,
        duration_ms=n,
        output_summary="filled",
        source="scenario",
    )


async def _artifact_rows(key: str) -> str:
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    return next(a.data for a in artifacts if a.key == key)


def test_ingestion_moves_spool_into_ops_once(settings: Settings) -> None:
    record_ops(settings, [(None, _op(n)) for n in range(5)])
    record_ops(settings, [("same-id", _op(5)), ("same-id", _op(6))])

    report = ingest_events(IngestParameters(reason="test"))

    lines = settings.layout.ops_path.read_bytes().splitlines()
    assert lines == [_op(n).to_line() for n in range(6)]
    assert (report.ingested, report.duplicates) == (6, 1)

    again = ingest_events(return_state=True)  # nothing new: stops before any step
    assert again.is_completed()
    assert again.message == "nothing new: the spool is empty (6 op(s) ingested in all)"
    assert settings.layout.ops_path.read_bytes().splitlines() == lines
