r"""Charts the product draws itself: small SVGs for the run pages, a sparkline for the terminal.

A chart is an object that renders itself (as rich's renderables do): a frozen dataclass of the
numbers it shows, with

- `svg()`: the picture, 640 px wide (its `viewBox` lets it shrink), a solid white card with a
  `<title>`, fonts of 11 px and more, at most 7.5 KB; the same data always gives the same bytes;
- `image()`: the markdown image, `![alt](data:image/svg+xml;base64,…)`, the one form both Prefect
  UIs render inside a markdown artifact (inline `<svg>` is stripped, external URLs break);
- `table()`: the same numbers as rows (`.markdown()` for a GFM table), so search, copy and screen
  readers keep working;
- `markdown()`: the image, a caption naming what is shaded or marked, and the table.

Every label and title is outside text as far as the chart knows: it is XML-escaped in the SVG and
markdown-escaped (`observer.markdown`) around it. Each chart bounds what it draws (series, points,
bars, categories) and raises `ValueError` beyond, so a report cannot outgrow its size budget; the
caller keeps the largest and sums up the rest.

Values over time or over attempts, a shaded span, a vertical marker, a dashed reference beside::

    from datetime import UTC, datetime
    from observer.charts import LineChart, Marker, Series, Span

    day = lambda d: datetime(2026, 12, d, tzinfo=UTC)
    chart = LineChart(
        title="Failure rate of key 'fill/welder', before and after the correction",
        series=[
            Series("failure rate", [(day(1), 0.42), (day(2), 0.40), (day(3), 0.12)]),
            Series("reference decay", [(day(1), 0.42), (day(2), 0.35), (day(3), 0.30)],
                   dashed=True, muted=True),
        ],
        x_name="day",
        y_format="percent",
        y_max=1.0,
        markers=[Marker(day(2), "correction applied")],
        spans=[Span(day(2), day(3), "after")],
    )
    artifact_markdown = "## Outcome\n\n" + chart.markdown()

Measures per category in panels of their own (two units, one row of days), some categories marked::

    from observer.charts import BarChart, Bars

    chart = BarChart(
        title="History: rows and bytes per day",
        categories=["2026-12-01", "2026-12-02", "2026-12-03"],
        measures=[Bars("rows", [1200, 800, 950]), Bars("bytes", [3.1e6, 2.2e6, 2.4e6], "bytes")],
        category_name="day",
        marked={"2026-12-01"},
        mark_label="dropped",
    )

Ranked horizontal bars, a lighter one behind (p95 behind p50), some highlighted::

    from observer.charts import Bar, RankedBars

    chart = RankedBars(
        title="Latency per endpoint",
        bars=[Bar("scenario:fill", 25, behind=39), Bar("/query", 12, behind=80, highlight=True)],
        label_name="endpoint",
        value_name="p50",
        behind_name="p95",
        highlight_name="slower than last run",
        format="ms",
    )

In a terminal, a series as one line of blocks::

    from observer.charts import sparkline

    sparkline([0, 1, 3, 8, 2])  # " ▁▃█▂"

Formats (`y_format`, `format`): `count` (1.2k), `percent` (a fraction drawn as 85%), `ms`
(120 ms, 1.4 s), `bytes` (12 MB), `number`. Tables give the exact value (`85.0%`, `1234`).
"""

from observer.charts.bars import MAX_BARS, Bar, BarChart, Bars, RankedBars
from observer.charts.figure import MAX_SVG_BYTES, Chart, DataTable
from observer.charts.lines import LineChart, Marker, Series, Span
from observer.charts.spark import sparkline

__all__ = [
    "MAX_BARS",
    "MAX_SVG_BYTES",
    "Bar",
    "BarChart",
    "Bars",
    "Chart",
    "DataTable",
    "LineChart",
    "Marker",
    "RankedBars",
    "Series",
    "Span",
    "sparkline",
]
