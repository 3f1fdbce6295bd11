"""Failure grouping: endpoint + a normalised error message, in the spirit of Sentry's grouping.

Two failures that differ only in an id, a number, a path or a quoted value are the same problem, so
they share a group and are analysed (and paid for) once. The normaliser is one ordered list of
regular expressions applied as a polars expression, so grouping thousands of failures stays
vectorised; `normalise_error()` runs the very same expression on one string (tests, callers).
"""

from __future__ import annotations

import hashlib
import re

import polars as pl
from pydantic import BaseModel

from observer.ops import cut

#: Longest normalised pattern kept; longer messages rarely differ only after this point.
PATTERN_CHARS = 240
#: Only this much of a message is normalised (bounds the regex work on huge error strings).
NORMALISED_INPUT_CHARS = 4 * PATTERN_CHARS
#: Longest sample error kept per group.
SAMPLE_CHARS = 1000
_SURROGATE = re.compile("[\ud800-\udfff]")

#: (regex, replacement) in order: wider shapes first so their digits are not numbered one by one.
#: Rust regex syntax (no look-around); `${1}` keeps the character that preceded a match.
NORMALISATION_RULES: tuple[tuple[str, str], ...] = (
    (r'"[^"\n]*"', "<str>"),
    (r"`[^`\n]*`", "<str>"),
    (r"(^|[^\w])'[^'\n]*'", "${1}<str>"),
    (r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s,;)\]]+", "<url>"),
    (r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b", "<email>"),
    (r"(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<uuid>"),
    (
        r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?",
        "<ts>",
    ),
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<ip>"),
    (r"(^|[\s(\[=:,])(?:[A-Za-z]:)?(?:[\\/][^\s\\/:,;()\[\]<>]+)+[\\/]?", "${1}<path>"),
    (r"(?i)\b0x[0-9a-f]+\b", "<hex>"),
    (r"\b\d{8,}\b", "<num>"),
    (r"(?i)\b[0-9a-f]{8,}\b", "<hex>"),
    (r"\b\d+(?:\.\d+)?([a-zA-Z]{0,3})\b", "<num>${1}"),
    (r"\b[\w-]*\d[\w-]*\d[\w-]*\b", "<id>"),
    (r"\s+", " "),
)


class Group(BaseModel):
    """Failures of one endpoint with the same normalised error."""

    endpoint: str
    pattern: str
    signature: str
    count: int
    first_seen: str
    last_seen: str
    sample_error: str
    sample_input: str
    sources: list[str]


def failure_text() -> pl.Expr:
    """A failure's text as it is grouped: `error`, else `output_summary`, else "failed"."""
    return pl.coalesce("error", "output_summary", pl.lit("failed"))


def normalise_expr(column: pl.Expr) -> pl.Expr:
    """The normaliser as a polars expression over a string column."""
    expr = column.str.slice(0, NORMALISED_INPUT_CHARS)
    for pattern, replacement in NORMALISATION_RULES:
        expr = expr.str.replace_all(pattern, replacement)
    return expr.str.strip_chars().str.slice(0, PATTERN_CHARS)


def normalise_error(text: str) -> str:
    """One error message with its variable parts replaced by placeholders."""
    series = pl.Series("error", [text], dtype=pl.String)
    return series.to_frame().select(normalise_expr(pl.col("error")))["error"][0]


def signature(endpoint: str, pattern: str) -> str:
    """A stable short id of a group: the key of the analysis cache and of the delivered state."""
    return hashlib.sha256(f"{endpoint}\0{pattern}".encode()).hexdigest()[:16]


def group_failures(failures: pl.DataFrame) -> list[Group]:
    """Group a failures frame (see `observer.failures.FAILURE_SCHEMA`), biggest group first."""
    if failures.height == 0:
        return []
    grouped = (
        failures.lazy()
        .with_columns(normalise_expr(pl.col("error_text")).alias("pattern"))
        .group_by("endpoint", "pattern")
        .agg(
            pl.len().alias("count"),
            pl.col("timestamp").min().fill_null("?").alias("first_seen"),
            pl.col("timestamp").max().fill_null("?").alias("last_seen"),
            pl.col("error_text").last().str.slice(0, SAMPLE_CHARS).alias("sample_error"),
            pl.col("input_summary").last().fill_null("?").alias("sample_input"),
            pl.col("source").fill_null("mcp").unique(maintain_order=True).head(3).alias("sources"),
        )
        .sort(["count", "endpoint", "pattern"], descending=[True, False, False])
        .collect()
    )
    return [
        Group(signature=signature(row["endpoint"], row["pattern"]), **row)
        for row in grouped.iter_rows(named=True)
    ]


def clean_cut(text: str, limit: int) -> str:
    """At most `limit` characters, never half a character: surrogates repaired, no dangling joiner.

    Text read with Python's json may hold surrogate halves (the original wrote them escaped); a
    valid pair becomes its character, a lone half becomes U+FFFD, so the result always encodes.
    """
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    short = cut(text, limit)
    if len(short) < len(text):
        short = short.rstrip("\u200d\ufe0f")  # a joiner or selector whose partner was cut off
    return short
