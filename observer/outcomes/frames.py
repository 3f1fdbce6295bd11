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


#: What a look-back window needs (a reader may return only these: a week of ops is big).
LOOKBACK_COLUMNS: tuple[str, ...] = (
    "pos",
    "ts",
    "endpoint",
    "source",
    "success",
    "sig_hash",
    "task_class",
    "error",
    "output_summary",
)


def empty_ops() -> pl.DataFrame:
    return pl.DataFrame(schema=OPS_SCHEMA)


def conform(
    frame: pl.DataFrame, what: str, *, columns: Iterable[str] = OPS_SCHEMA, ordered: bool = True
) -> pl.DataFrame:
    """The frame's `columns` (of OPS_SCHEMA), cast to their types, in arrival order (`pos`) when
    `ordered` (a look-back window is only filtered and grouped: its order does not matter)."""
    wanted = list(columns)
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise OutcomeInputError(f"{what}: missing column(s) {', '.join(missing)}")
    try:
        conformed = frame.select(
            pl.col(name).cast(OPS_SCHEMA[name], strict=True) for name in wanted
        )
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise OutcomeInputError(f"{what}: a column has the wrong type: {exc}") from None
    if conformed["pos"].null_count():
        raise OutcomeInputError(f"{what}: every op needs its `pos`")
    return conformed.sort("pos") if ordered and not conformed["pos"].is_sorted() else conformed


def is_attempt() -> pl.Expr:
    """Whether an op is an attempt: timed, with a known outcome, and not a correction."""
    return (
        pl.col("ts").is_not_null()
        & pl.col("success").is_not_null()
        & (pl.col("source").fill_null("") != CORRECTION_SOURCE)
    )


def attempts(frame: pl.DataFrame) -> pl.DataFrame:
    """The ops that are attempts."""
    return frame.filter(is_attempt())


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


#: (ts, pos, key id, spec id, exposure, failed, late) of attempts that count for one spec.
Contribution = tuple[datetime, int, str, str, float, bool, bool]
CONTRIBUTION_SCHEMA = {
    "ts": pl.Datetime("us", "UTC"),
    "pos": pl.Int64,
    "key_id": pl.String,
    "spec": pl.String,
    "exposure": pl.Float64,
    "failed": pl.Boolean,
    "late": pl.Boolean,
}


def contributions(frame: pl.DataFrame, specs: Iterable[Spec], *, late: bool) -> pl.DataFrame:
    """Every attempt of `frame` (with `pattern`) that counts for a spec (CONTRIBUTION_SCHEMA).

    An attempt is exposure for a spec when it is the key's own (exposure `attempts`) or its
    endpoint's and at risk for the key (`endpoint-attempts`: a success, or a failure of the key; an
    attempt that failed with something else never reached what the key fails on); it is a
    failure of the key when it failed and matches the key. With hours as exposure only the key's
    failures count (exposure 0).
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
        return pl.DataFrame(schema=CONTRIBUTION_SCHEMA)
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
                (pl.col("ts") >= pl.col("since"))
                & ((pl.col("unit") != "hours") | pl.col("failed"))
                # an attempt of the endpoint that failed otherwise was never at risk for the key
                & ((pl.col("unit") != "endpoint-attempts") | pl.col("success") | own)
            )
            .select("ts", "pos", "key_id", "spec", "exposure", "failed", pl.lit(late).alias("late"))
        )
    return pl.concat(parts) if parts else pl.DataFrame(schema=CONTRIBUTION_SCHEMA)


#: Where an episode stands before a call's attempts, for `compress` (one row per spec).
START_SCHEMA = {
    "spec": pl.String,
    "x0": pl.Float64,  # exposure after so far
    "s0": pl.Float64,  # exposure since its last failure
    "needed": pl.Float64,  # the recovery run still to reach (null: reached or none)
    "post_start": pl.Datetime("us", "UTC"),
    "window_end": pl.Datetime("us", "UTC"),
    "until": pl.Datetime("us", "UTC"),  # the watch's end (null: no watch)
    "thresholds": pl.List(pl.Float64),  # looks still to take
}


def compress(rows: pl.DataFrame, starts: pl.DataFrame) -> list[Contribution]:
    """The attempts in (ts, pos) order, with every run of them that cannot change an episode's
    course folded into one row (its exposure summed, its last attempt's time and place kept).

    Only specs in `starts` are folded, and a row is kept as it is when it failed, reaches a look
    or the recovery run, or lies outside the post window or past the watch: so the engine sees
    the same looks, recoveries and alarms, at the same attempts, as without folding, at a cost
    that follows failures and looks instead of attempts."""
    if rows.height == 0 or starts.height == 0:
        return list(rows.sort("ts", "pos", "spec").iter_rows())
    inside = (pl.col("ts") >= pl.col("post_start")) & (pl.col("ts") < pl.col("window_end"))
    counted = pl.when(inside).then(pl.col("exposure")).otherwise(0.0)
    marked = (
        rows.join(starts, on="spec", how="left")
        .sort("spec", "ts", "pos")
        .with_columns(counted.alias("counted"))
        .with_columns(
            (pl.col("counted").cum_sum().over("spec") + pl.col("x0")).alias("cum"),
            (pl.col("failed").cum_sum().over("spec") - pl.col("failed")).alias("segment"),
        )
        .with_columns(
            (
                pl.when(pl.col("segment") == 0).then(pl.col("s0")).otherwise(0.0)
                + pl.col("counted").cum_sum().over("spec", "segment")
            ).alias("since")
        )
    )
    reaches_look = pl.col("thresholds").list.contains(pl.col("cum")).fill_null(False)
    reaches_recovery = (
        (pl.col("since") >= pl.col("needed"))
        & (pl.col("since") - pl.col("counted") < pl.col("needed"))
    ).fill_null(False)
    keep = (
        pl.col("x0").is_null()
        | pl.col("failed")
        | ~inside.fill_null(False)
        | (pl.col("ts") >= pl.col("until")).fill_null(False)
        | reaches_look
        | reaches_recovery
    )
    marked = marked.with_columns(keep.alias("keep")).with_columns(
        pl.col("keep").cum_sum().over("spec").alias("run")
    )
    columns = list(CONTRIBUTION_SCHEMA)
    kept = marked.filter(pl.col("keep")).select(columns)
    folded = (
        marked.filter(~pl.col("keep"))
        .group_by("spec", "run")
        .agg(
            pl.col("ts").last(),
            pl.col("pos").last(),
            pl.col("key_id").first(),
            pl.col("exposure").sum(),
            pl.lit(False).alias("failed"),
            pl.col("late").all(),
        )
        .select(columns)
    )
    return list(pl.concat([kept, folded]).sort("ts", "pos", "spec").iter_rows())


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
