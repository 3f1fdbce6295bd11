"""The drawing primitives: valid, small, deterministic SVG whose drawing is the table beside it.

Pure unit tests (no Prefect). The geometry checks read the SVG back: bar heights and widths must be
proportional to the values in the chart's table, line points an affine image of them, marked and
highlighted shapes as many as the table's marks.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import observer.charts
from observer.charts import (
    MAX_SVG_BYTES,
    Bar,
    BarChart,
    Bars,
    Chart,
    LineChart,
    Marker,
    RankedBars,
    Series,
    Span,
    sparkline,
)
from observer.charts.bars import MAX_BARS, MAX_CATEGORIES, MAX_MEASURES
from observer.charts.figure import ACCENT, BACKGROUND
from observer.charts.lines import MAX_POINTS, MAX_SERIES
from tests.rendered import as_html

ROOT = Path(__file__).resolve().parent.parent  # not conftest's: the determinism check imports this
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(1)</script> ]]> & \" ' \x00\x07\ufffe [x](http://evil) ![](http://e/p.png)"
DAY0 = datetime(2026, 12, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return DAY0 + timedelta(days=n)


def outcome_chart() -> LineChart:
    """What assess-outcomes will draw: a rate before and after, the intervention, a reference."""
    days = [day(i) for i in range(6)]
    rate = Series(
        "failure rate", list(zip(days, [0.42, 0.40, 0.45, 0.12, 0.10, 0.08], strict=True))
    )
    reference = [0.42, 0.38, 0.35, 0.32, 0.30, 0.28]
    decay = Series(
        "reference decay", list(zip(days, reference, strict=True)), dashed=True, muted=True
    )
    title = "Failure rate of fill/welder before and after the correction"
    intervention, after = Marker(days[3], "correction applied"), Span(days[3], days[5], "after")
    return LineChart(title, [rate, decay], "day", "percent", 1.0, [intervention], [after])


def history_chart() -> BarChart:
    """What compact-history will draw: rows and bytes per day, the days dropped marked."""
    days = [day(i).date().isoformat() for i in range(14)]
    return BarChart(
        title="History: rows and bytes per day",
        categories=days,
        measures=[
            Bars("rows", [1000 + 37 * i for i in range(14)]),
            Bars("bytes", [2_000_000 + 91_000 * i for i in range(14)], "bytes"),
        ],
        category_name="day",
        marked=set(days[:3]),
        mark_label="dropped",
    )


def documented() -> dict[str, Chart]:
    """The charts of the API's docstring examples, each run as written, by kind."""
    blocks = re.findall(r"::\n\n((?:    .*\n|\n)+)", observer.charts.__doc__ or "")
    charts: dict[str, Chart] = {}
    for block in blocks:
        scope: dict[str, object] = {}
        exec(textwrap.dedent(block), scope)  # the docstring is ours: its examples are code
        if isinstance(chart := scope.get("chart"), Chart):
            charts[type(chart).__name__] = chart
    return charts


def latency_chart() -> RankedBars:
    chart = documented()["RankedBars"]
    assert isinstance(chart, RankedBars)
    return chart


def every_kind() -> list[Chart]:
    return [outcome_chart(), history_chart(), latency_chart()]


def parsed(chart: Chart) -> ET.Element:
    return ET.fromstring(chart.svg())


def number_list(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text)]


def test_the_documented_examples_draw() -> None:
    """Each example of the API's docstring runs as written and draws a valid chart."""
    charts = documented()
    assert list(charts) == ["LineChart", "BarChart", "RankedBars"]
    for chart in charts.values():
        ET.fromstring(chart.svg())


# ── what every chart is ─────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("chart", every_kind(), ids=lambda c: type(c).__name__)
def test_a_chart_is_valid_svg_with_viewbox_background_title_and_legible_fonts(chart: Chart) -> None:
    root = parsed(chart)
    width, height = chart.size()
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == f"0 0 {width} {height}"
    assert root[0].tag == f"{SVG}title" and root[0].text == chart.title
    background = root.find(f"{SVG}rect")
    assert background is not None and background.get("fill") == BACKGROUND
    assert float(background.get("width", 0)) >= width - 1
    assert float(background.get("height", 0)) >= height - 1
    style = root.find(f"{SVG}style")
    assert style is not None and style.text is not None
    sizes = [int(px) for px in re.findall(r"font-size:(\d+)px", style.text)]
    assert sizes and min(sizes) >= 11
    assert root.find(f".//{SVG}script") is None and "href" not in chart.svg()
    assert len(chart.svg().encode()) <= MAX_SVG_BYTES


@pytest.mark.parametrize("chart", every_kind(), ids=lambda c: type(c).__name__)
def test_the_markdown_image_is_a_data_uri_of_the_svg_with_escaped_alt_text(chart: Chart) -> None:
    image = chart.image()
    uri = re.fullmatch(r"!\[.*\]\((data:image/svg\+xml;base64,[A-Za-z0-9+/=]+)\)", image)
    assert uri is not None
    assert base64.b64decode(uri.group(1).split(",", 1)[1]).decode() == chart.svg()
    assert len(uri.group(1)) <= 10_000
    html = as_html(chart.markdown())
    assert html.count("<img ") == 1 and f'alt="{chart.alt()}"' in html
    assert "<table>" in html


def test_the_same_data_gives_the_same_bytes_in_any_process() -> None:
    """Sets and dicts in the data must not leak their (hash-seeded) order into the picture."""
    script = (
        "import hashlib, tests.test_charts as t\n"
        "print(hashlib.sha256(''.join(c.svg() for c in t.every_kind()).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    here = hashlib.sha256("".join(c.svg() for c in every_kind()).encode()).hexdigest()
    assert digests == {here}


# ── the drawing is the table ────────────────────────────────────────────────────────────────────


def test_line_points_are_the_table_values() -> None:
    chart = outcome_chart()
    table = chart.table()
    assert table.columns == ("day", "failure rate", "reference decay")
    assert table.rows[0] == ("2026-12-01", "42.0%", "42.0%")
    lines = [p for p in parsed(chart).iter(f"{SVG}path") if "l" in p.get("class", "").split()]
    lines = lines[len(chart.series) :]  # the legend's swatches come first
    assert len(lines) == 2
    assert "d" in lines[1].get("class", "").split()  # the reference is dashed
    values = [[float(row[col].rstrip("%")) for row in table.rows] for col in (1, 2)]
    ys = [number_list(path.get("d", ""))[1::2] for path in lines]
    xs = [number_list(path.get("d", ""))[0::2] for path in lines]
    # pixel = a + b * value, the same a and b for every point of both series
    (v0, v1), (y0, y1) = (values[0][0], values[0][3]), (ys[0][0], ys[0][3])
    slope = (y1 - y0) / (v1 - v0)
    for series_values, series_ys in zip(values, ys, strict=True):
        for value, y in zip(series_values, series_ys, strict=True):
            assert y == pytest.approx(y0 + slope * (value - v0), abs=0.15)
    assert xs[0] == xs[1] and xs[0] == sorted(xs[0])
    marker = [line for line in parsed(chart).iter(f"{SVG}line") if "d" in line.get("class", "")]
    assert len(marker) == 1 and float(marker[0].get("x1", 0)) == pytest.approx(xs[0][3], abs=0.1)
    assert chart.caption() == (
        "Shaded: after (2026-12-04 to 2026-12-06). Line: correction applied at 2026-12-04."
    )


def _bars_of(path: ET.Element) -> list[tuple[float, float]]:
    """(x, height) of each bar of a bar path `M x y h w V bottom h -w z`."""
    bars = []
    for x, y, _, bottom in re.findall(
        r"M(-?[\d.]+) (-?[\d.]+)h([\d.]+)V([\d.]+)h-[\d.]+z", path.get("d", "")
    ):
        bars.append((float(x), float(bottom) - float(y)))
    return bars


def test_bar_heights_are_the_table_values_and_the_marked_days_are_hatched() -> None:
    chart = history_chart()
    table = chart.table()
    assert table.columns == ("day", "rows", "bytes", "dropped")
    paths = [p for p in parsed(chart).iter(f"{SVG}path") if p.get("fill")]
    plain = [p for p in paths if p.get("fill", "").startswith("#")]
    hatched = [p for p in paths if p.get("fill") == "url(#h)"]
    marked_rows = [row for row in table.rows if row[3] == "yes"]
    assert len(marked_rows) == 3
    for measure in (0, 1):
        bars = sorted(_bars_of(plain[measure]) + _bars_of(hatched[measure]))
        assert len(_bars_of(hatched[measure])) == len(marked_rows)
        values = [float(row[1 + measure]) for row in table.rows]
        ratio = bars[-1][1] / values[-1]
        for (_, height), value in zip(bars, values, strict=True):
            assert height == pytest.approx(value * ratio, abs=0.15)


def test_ranked_bar_widths_are_the_table_values_and_highlights_are_marked() -> None:
    chart = latency_chart()
    table = chart.table()
    assert table.rows == (
        ("scenario:fill", "25 ms", "39 ms", ""),
        ("/query", "12 ms", "80 ms", "yes"),
    )
    rects = [r for r in parsed(chart).iter(f"{SVG}rect") if r.get("height") == "14"]
    widths = [float(r.get("width", 0)) for r in rects]  # behind, front, behind, front
    scale = widths[0] / 39
    assert widths == pytest.approx([39 * scale, 25 * scale, 80 * scale, 12 * scale], abs=0.15)
    assert [r.get("fill") for r in rects[1::2]].count(ACCENT) == 1


# ── hostile labels and size budgets ─────────────────────────────────────────────────────────────


def test_hostile_labels_stay_text_in_the_svg_and_in_the_markdown() -> None:
    chart = RankedBars(title=HOSTILE, bars=[Bar(HOSTILE, 3, highlight=True)], label_name=HOSTILE)
    root = parsed(chart)  # parses: XML's invalid characters are replaced, markup escaped
    assert root.find(f".//{SVG}script") is None
    assert "\ufffd" in (root[0].text or "")
    html = as_html(chart.markdown())
    assert html.count("<img ") == 1 and "<script" not in html
    assert 'href="http://evil"' not in html and 'src="http://e/p.png"' not in html


def test_the_largest_charts_stay_within_the_size_budget() -> None:
    long = "endpoint/" + "x" * 200 + HOSTILE
    line = LineChart(
        title=long,
        series=[
            Series(f"{long}{i}", [(day(0) + timedelta(hours=h), 1e9 / (h + 1)) for h in range(60)])
            for i in range(MAX_SERIES)
        ],
        markers=[Marker(day(1), long)],
        spans=[Span(day(0), day(1), long)],
    )
    days = [f"{long}{i}" for i in range(MAX_CATEGORIES)]
    bars = BarChart(
        title=long,
        categories=days,
        measures=[Bars(long, [1e12 + i for i in range(MAX_CATEGORIES)], "bytes")] * MAX_MEASURES,
        marked=set(days[::2]),
        mark_label=long,
    )
    ranked = RankedBars(
        title=long,
        bars=[
            Bar(f"{long}{i}", 1e9 - i, behind=2e9, highlight=i % 2 == 0) for i in range(MAX_BARS)
        ],
        value_name=long,
        behind_name=long,
        highlight_name=long,
        format="bytes",
    )
    assert sum(len(s.points) for s in line.series) == MAX_POINTS
    for chart in (line, bars, ranked):
        assert len(chart.svg().encode()) <= MAX_SVG_BYTES, type(chart).__name__
        ET.fromstring(chart.svg())


def test_more_than_a_chart_can_draw_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        RankedBars(title="t", bars=[Bar(str(i), i) for i in range(MAX_BARS + 1)])
    with pytest.raises(ValueError, match="at most"):
        LineChart(title="t", series=[Series("s", [(i, i) for i in range(MAX_POINTS + 1)])])
    with pytest.raises(ValueError, match="one value per category"):
        BarChart(title="t", categories=["a", "b"], measures=[Bars("m", [1])])


def test_a_sparkline_is_one_block_per_value_and_zero_is_blank() -> None:
    assert sparkline([0, 1, 3, 8, 2]) == " ▁▃█▂"
    assert sparkline([0, 0]) == "  " and sparkline([]) == ""
    assert sparkline([5, 5, 5]) == "███"
    assert sparkline([1000, 1]) == "█▁"  # a small value is still seen
    assert sparkline([1, 0, 4], top=8) == "▁ ▄"  # on another series' scale
