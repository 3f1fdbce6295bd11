"""`tail-corrections`: record new rows of the overseer's corrections file as ops.

Scheduled every cycle, concurrency 1. Each run resumes from its on-disk checkpoint, so runs can be
cancelled, retried or repeated without losing or doubling a row.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from observer.corrections import TailReport
from tasks.corrections import announce_spool, report_tailing, tail_corrections_file


class TailParameters(BaseModel):
    """Parameters of a tailing run (shown as a form in the Prefect UI); empty means the setting."""

    from_offset: int | None = Field(
        None,
        ge=0,
        description="re-read the current file from this byte (moved to the next line start);"
        " rows already recorded are dropped as duplicates",
    )
    grace_seconds: float | None = Field(
        None,
        ge=0,
        description="take an unterminated last line as a row once it stayed unchanged this long"
        " (default OBSERVER_CORRECTIONS_GRACE_SECONDS)",
    )
    max_bytes: int | None = Field(
        None,
        gt=0,
        description="read at most about this many bytes in this run; the rest waits for the next"
        " (default OBSERVER_CORRECTIONS_MAX_BYTES_PER_RUN)",
    )


@flow(name="tail-corrections")
def tail_corrections(params: TailParameters = TailParameters()) -> TailReport:
    report = tail_corrections_file(params.from_offset, params.grace_seconds, params.max_bytes)
    if report.recorded:
        announce_spool(report.recorded)
    report_tailing(report)
    return report
