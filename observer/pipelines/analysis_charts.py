"""The pictures of an analysis run: failures per endpoint per day, and the run's groups by size.

The days before a run's window are not reread: a scheduled run reads each byte of ops.jsonl once
(the watermark), so it adds its failures per (day, endpoint) to `DailyFailures` in the analysis
state when it commits, and those counts stay exact without rereading anything. A run that reads
bytes counted before (`since_hours`, `force`) takes, per day and endpoint, the larger of what it
read and what was counted: never a failure twice. Days are the UTC dates the ops carry; ops dated
beyond tomorrow or not dated at all are left out of the picture (a client's clock is not ours).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import polars as pl
from pydantic import BaseModel, Field

from observer.charts import Bar, LineChart, RankedBars, Series, Span
from observer.pipelines.grouping import Group, clean_cut

#: Days kept in the analysis state, and drawn.
KEPT_DAYS = 14
CHART_DAYS = 7
#: Endpoints kept per day; the failures of the others are kept as one number.
KEPT_ENDPOINTS = 50
DRAWN_ENDPOINTS = 4
DRAWN_GROUPS = 12
OTHERS = "other endpoints"

Daily = dict[str, dict[str, int]]  # "2026-12-01" → endpoint → failures


class DailyFailures(BaseModel):
    """Failures per endpoint per UTC day, over the last KEPT_DAYS days, counted once each."""

    days: Daily = Field(default_factory=dict)
    others: dict[str, int] = Field(default_factory=dict)

    def total(self, day: str) -> dict[str, int]:
        counts = dict(self.days.get(day, {}))
        if self.others.get(day):
            counts[OTHERS] = self.others[day]
        return counts

    def added(self, counts: Daily, today: date) -> DailyFailures:
        """These counts added (a run's fresh failures), trimmed to what is kept."""
        return self.combined(counts, operator.add, today)

    def combined(
        self, counts: Daily, combine: Callable[[int, int], int], today: date
    ) -> DailyFailures:
        merged = self.model_copy(deep=True)
        for day, endpoints in counts.items():
            into = merged.days.setdefault(day, {})
            for endpoint, n in endpoints.items():
                into[endpoint] = combine(into.get(endpoint, 0), n)
        return merged.trimmed(today)

    def trimmed(self, today: date) -> DailyFailures:
        first = (today - timedelta(days=KEPT_DAYS - 1)).isoformat()
        last = (today + timedelta(days=1)).isoformat()
        days: Daily = {}
        others = {d: n for d, n in self.others.items() if first <= d <= last}
        for day in sorted(d for d in self.days if first <= d <= last):
            ranked = sorted(self.days[day].items(), key=lambda item: (-item[1], item[0]))
            days[day] = dict(ranked[:KEPT_ENDPOINTS])
            if rest := sum(n for _, n in ranked[KEPT_ENDPOINTS:]):
                others[day] = others.get(day, 0) + rest
        return DailyFailures(days=days, others=others)


def count_by_day(failures: pl.DataFrame) -> Daily:
    """A failures frame (`timestamp`, `endpoint`) as failures per endpoint per UTC day."""
    day = pl.col("timestamp").str.slice(0, 10)
    counted = (
        failures.filter(day.str.contains(r"^\d{4}-\d{2}-\d{2}$"))
        .group_by(day.alias("day"), "endpoint")
        .agg(pl.len().alias("n"))
        .sort("day", "endpoint")
    )
    result: Daily = {}
    for row in counted.iter_rows(named=True):
        result.setdefault(row["day"], {})[row["endpoint"]] = row["n"]
    return result


def drawn_daily(
    stored: DailyFailures,
    read: Daily,
    counted_before: bool,
    *,
    endpoint: str | None,
    today: date,
) -> DailyFailures:
    """What a run's chart shows: the stored days plus what it read, or, where it read bytes
    counted before, the larger of the two per day and endpoint; one endpoint's only with a filter."""
    if endpoint is not None:
        stored = DailyFailures(
            days={d: {endpoint: c[endpoint]} for d, c in stored.days.items() if endpoint in c}
        )
    return stored.combined(read, max if counted_before else operator.add, today)


def trend_chart(
    daily: DailyFailures,
    marked_endpoints: set[str],
    window: tuple[str, str] | None,
    today: date,
) -> LineChart:
    """Failures per day of the most failing endpoints (solid: those with new groups in this run),
    the rest summed up, over the CHART_DAYS days up to the last one with failures."""
    present = [d for d in daily.days if any(daily.total(d).values())]
    last = min(date.fromisoformat(max(present)), today) if present else today
    days = [last - timedelta(days=CHART_DAYS - 1 - i) for i in range(CHART_DAYS)]
    per_day = [daily.total(d.isoformat()) for d in days]
    totals: dict[str, int] = {}
    for counts in per_day:
        for endpoint, n in counts.items():
            if endpoint != OTHERS:
                totals[endpoint] = totals.get(endpoint, 0) + n
    ranked = sorted(totals, key=lambda e: (e not in marked_endpoints, -totals[e], e))
    drawn = ranked[:DRAWN_ENDPOINTS]
    moments = [datetime(d.year, d.month, d.day, tzinfo=UTC) for d in days]
    series = [
        Series(
            endpoint,
            [(m, counts.get(endpoint, 0)) for m, counts in zip(moments, per_day, strict=True)],
            dashed=endpoint not in marked_endpoints,
        )
        for endpoint in drawn
    ]
    rest = [sum(n for e, n in counts.items() if e not in drawn) for counts in per_day]
    if any(rest):
        series.append(
            Series(OTHERS, list(zip(moments, rest, strict=True)), dashed=True, muted=True)
        )
    spans = []
    if window is not None:
        start, end = (_moment(t) for t in window)
        if start is not None and end is not None and moments[0] <= start:
            spans.append(Span(start, end, "this run"))
    return LineChart(
        title="Failures per endpoint per day (solid: new groups in this run)",
        series=series,
        x_name="day (UTC)",
        spans=spans,
    )


def groups_chart(groups: list[Group], fresh: set[str]) -> RankedBars:
    """The run's largest groups, new ones highlighted; the rest are summed up in the caption."""
    ranked = sorted(groups, key=lambda g: (-g.count, g.endpoint, g.pattern))
    shown, rest = ranked[:DRAWN_GROUPS], ranked[DRAWN_GROUPS:]
    note = (
        f"{len(rest)} more group(s) with {sum(g.count for g in rest)} failure(s) are in the"
        " groups table."
        if rest
        else ""
    )
    return RankedBars(
        title="This run's failure groups by size",
        bars=[
            Bar(
                f"{g.endpoint}: {clean_cut(g.pattern, 60)}",
                g.count,
                highlight=g.signature in fresh,
            )
            for g in shown
        ],
        label_name="group",
        value_name="failures",
        highlight_name="new in this run",
        note=note,
    )


def _moment(timestamp: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
