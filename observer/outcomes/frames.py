"""The ops frames the engine reads: the history table's columns, checked once at the door.

Both the new ops and every look-back window come as polars frames with (at least) these columns,
named and typed as the history table has them. Extra columns are ignored; a missing column or one
that cannot be cast is an `OutcomeInputError` naming it, before anything is judged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import NamedTuple

import polars as pl

from observer.errors import OutcomeInputError
from observer.pipelines.grouping import failure_text, normalise_expr

CORRECTION_SOURCE = "overseer_correction"

OPS_SCHEMA: dict[str, pl.DataType] = {
    "pos": pl.Int64(),
    "ts": pl.Datetime("us", "UTC"),
    "endpoint": pl.String(),
    "source": pl.String(),
    "success": pl.Boolean(),
    "sig_hash": pl.String(),
    "task_class": pl.String(),
    "correction": pl.String(),
    "error": pl.String(),
    "output_summary": pl.String(),
    "input_summary": pl.String(),
}


def empty_ops() -> pl.DataFrame:
    return pl.DataFrame(schema=OPS_SCHEMA)


def conform(frame: pl.DataFrame, what: str) -> pl.DataFrame:
    """The frame's OPS_SCHEMA columns, cast to their types, in arrival order (`pos`)."""
    missing = [name for name in OPS_SCHEMA if name not in frame.columns]
    if missing:
        raise OutcomeInputError(f"{what}: missing column(s) {', '.join(missing)}")
    try:
        conformed = frame.select(
            pl.col(name).cast(dtype, strict=True) for name, dtype in OPS_SCHEMA.items()
        )
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise OutcomeInputError(f"{what}: a column has the wrong type: {exc}") from None
    if conformed["pos"].null_count():
        raise OutcomeInputError(f"{what}: every op needs its `pos`")
    return conformed.sort("pos")


def attempts(frame: pl.DataFrame) -> pl.DataFrame:
    """The ops that are attempts: timed, with a known outcome, and not corrections."""
    return frame.filter(
        pl.col("ts").is_not_null()
        & pl.col("success").is_not_null()
        & (pl.col("source").fill_null("") != CORRECTION_SOURCE)
    )


def with_patterns(frame: pl.DataFrame, endpoints: Collection[str]) -> pl.DataFrame:
    """A `pattern` column: the failure group (normalised error) of each failure of `endpoints`,
    null elsewhere. Only those failures are normalised (the regular expressions cost)."""
    wanted = pl.col("endpoint").is_in(list(endpoints)) & ~pl.col("success")
    if not endpoints:
        return frame.with_columns(pl.lit(None, pl.String).alias("pattern"))
    grouped = frame.filter(wanted).with_columns(normalise_expr(failure_text()).alias("pattern"))
    rest = frame.filter(~wanted).with_columns(pl.lit(None, pl.String).alias("pattern"))
    return pl.concat([grouped, rest]).sort("pos")


class Spec(NamedTuple):
    """What one episode counts: its key, its exposure unit, its endpoint."""

    key_id: str
    id: str
    field: str
    value: str
    pattern: str | None
    unit: str
    endpoint: str | None
    since: datetime  # the (last) intervention's time: nothing earlier counts


#: (ts, pos, key id, spec id, exposure, failed) of one attempt that counts for one spec.
Contribution = tuple[datetime, int, str, str, float, bool]


def contributions(frame: pl.DataFrame, specs: Iterable[Spec]) -> list[Contribution]:
    """Every attempt of `frame` (with `pattern`) that counts for a spec, in (ts, pos) order.

    An attempt is exposure for a spec when it is the key's own (exposure `attempts`) or its
    endpoint's (`endpoint-attempts`); it is a failure of the key when it failed and matches the key.
    With hours as exposure only the key's failures count (exposure 0).
    """
    table = pl.DataFrame(
        [
            {
                "key_id": spec.key_id,
                "spec": spec.id,
                "field": spec.field,
                "value": spec.value,
                "key_pattern": spec.pattern,
                "unit": spec.unit,
                "join_on": _join_column(spec),
                "join_value": spec.endpoint if spec.unit == "endpoint-attempts" else spec.value,
                "since": spec.since,
            }
            for spec in specs
        ],
        schema=_SPEC_SCHEMA,
    )
    if table.height == 0 or frame.height == 0:
        return []
    own = (
        pl.when(pl.col("field") == "sig_hash")
        .then(pl.col("sig_hash") == pl.col("value"))
        .when(pl.col("field") == "task_class")
        .then(pl.col("task_class") == pl.col("value"))
        .when(pl.col("field") == "group")
        .then(pl.col("pattern") == pl.col("key_pattern"))
        .otherwise(pl.col("endpoint") == pl.col("value"))
        .fill_null(False)
    )
    parts = []
    for column in ("sig_hash", "task_class", "endpoint"):
        wanted = table.filter(pl.col("join_on") == column)
        if wanted.height == 0:
            continue
        joined = frame.join(wanted, left_on=column, right_on="join_value", how="inner")
        parts.append(
            joined.with_columns(
                (~pl.col("success") & own).alias("failed"),
                pl.when(pl.col("unit") == "hours").then(0.0).otherwise(1.0).alias("exposure"),
            )
            .filter(
                (pl.col("ts") >= pl.col("since")) & ((pl.col("unit") != "hours") | pl.col("failed"))
            )
            .select("ts", "pos", "key_id", "spec", "exposure", "failed")
        )
    rows = pl.concat(parts).sort("ts", "pos", "spec")
    return list(rows.iter_rows())


def _join_column(spec: Spec) -> str:
    if spec.unit == "endpoint-attempts" or spec.field in ("endpoint", "group"):
        return "endpoint"
    return spec.field


_SPEC_SCHEMA = {
    "key_id": pl.String,
    "spec": pl.String,
    "field": pl.String,
    "value": pl.String,
    "key_pattern": pl.String,
    "unit": pl.String,
    "join_on": pl.String,
    "join_value": pl.String,
    "since": pl.Datetime("us", "UTC"),
}
