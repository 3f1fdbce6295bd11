"""Bars: measures per category in stacked panels (`BarChart`), and ranked horizontal bars
(`RankedBars`)."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from observer.charts import figure
from observer.charts.figure import Canvas, Chart, DataTable, Format, Plot

MAX_CATEGORIES = 62
MAX_MEASURES = 2
MAX_BARS = 12
ROW_HEIGHT = 22
HATCH = (
    '<defs><pattern id="h" width="6" height="6" patternUnits="userSpaceOnUse"'
    ' patternTransform="rotate(45)"><rect width="6" height="6" fill="#eef0f3"/>'
    f'<path d="M0 0v6" stroke="{figure.MUTED}" stroke-width="2.5"/></pattern></defs>'
)


@dataclass(frozen=True)
class Bars:
    """One measure: a value per category, drawn in a panel of its own with its own scale."""

    name: str
    values: Sequence[float]
    format: Format = "count"


@dataclass(frozen=True)
class BarChart(Chart):
    """Vertical bars per category (days), one panel per measure (rows, bytes) sharing the
    categories; `marked` categories are hatched and named `mark_label` (days dropped)."""

    title: str
    categories: Sequence[str]
    measures: Sequence[Bars]
    category_name: str = "category"
    marked: Collection[str] = field(default_factory=frozenset)
    mark_label: str = "marked"

    def __post_init__(self) -> None:
        if not 1 <= len(self.measures) <= MAX_MEASURES:
            raise ValueError(f"a bar chart draws 1 to {MAX_MEASURES} measures")
        if len(self.categories) > MAX_CATEGORIES:
            raise ValueError(f"a bar chart draws at most {MAX_CATEGORIES} categories")
        for measure in self.measures:
            if len(measure.values) != len(self.categories):
                raise ValueError(f"{measure.name}: one value per category")

    def table(self) -> DataTable:
        columns = (self.category_name, *(m.name for m in self.measures))
        if self.marked:
            columns += (self.mark_label,)
        rows = []
        for index, category in enumerate(self.categories):
            row = [category, *(figure.exact(m.values[index], m.format) for m in self.measures)]
            if self.marked:
                row.append("yes" if category in self.marked else "")
            rows.append(tuple(row))
        return DataTable(columns, tuple(rows))

    def caption(self) -> str:
        marked = [c for c in self.categories if c in self.marked]
        return f"Hatched: {self.mark_label} ({', '.join(marked)})." if marked else ""

    def draw(self, canvas: Canvas) -> None:
        legend = [(m.name, figure.PALETTE[i], "box") for i, m in enumerate(self.measures)]
        if self.marked:
            canvas.add(HATCH)
            legend.append((self.mark_label, "url(#h)", "box"))
        canvas.legend(legend)
        count = max(1, len(self.categories))
        left, right = 66.0, figure.WIDTH - 16.0
        slot = (right - left) / count
        panels_top, panels_bottom = 52.0, figure.HEIGHT - 28.0
        panel_height = (panels_bottom - panels_top) / len(self.measures)
        for index, measure in enumerate(self.measures):
            top = panels_top + index * panel_height + 8
            plot = Plot(left, top, right, top + panel_height - 14)
            highest = figure.nice_ceiling(max(measure.values, default=0), measure.format)
            plot.y_axis(canvas, highest, measure.format, counts=(2, 1))
            shapes: dict[bool, list[str]] = {False: [], True: []}
            width = figure.number(slot * 0.7)
            for position, (category, value) in enumerate(
                zip(self.categories, measure.values, strict=True)
            ):
                x, y = left + position * slot + slot * 0.15, plot.y(value, highest)
                shapes[category in self.marked].append(
                    f"M{figure.number(x)} {figure.number(y)}h{width}V{figure.number(plot.bottom)}h-{width}z"
                )
            for marked, fill in ((False, figure.PALETTE[index]), (True, "url(#h)")):
                if shapes[marked]:
                    canvas.add(f'<path d="{"".join(shapes[marked])}" fill="{fill}"/>')
        names = [figure.label(category, 12) for category in self.categories]
        widest = max((figure.text_width(name) for name in names), default=0)
        step = max(1, math.ceil((widest + 12) / slot))  # labels that do not touch
        for position in range(0, count, step):
            x = left + (position + 0.5) * slot
            canvas.text(x, figure.HEIGHT - 12, names[position], ' text-anchor="middle"')


@dataclass(frozen=True)
class Bar:
    """One row of a ranked chart: its value, an optional second value drawn lighter behind it
    (p95 behind p50), and whether it stands out (`highlight`: the run's new groups)."""

    label: str
    value: float
    behind: float | None = None
    highlight: bool = False


@dataclass(frozen=True)
class RankedBars(Chart):
    """Horizontal bars, one row each, in the order given (largest first, say), the value written
    at the end of each bar; labels are cut to fit beside them."""

    title: str
    bars: Sequence[Bar]
    label_name: str = "figure.label"
    value_name: str = "value"
    behind_name: str = ""
    highlight_name: str = ""
    format: Format = "count"
    top_value: float | None = None
    note: str = ""  # the caption: what is left out, say

    def __post_init__(self) -> None:
        if len(self.bars) > MAX_BARS:
            raise ValueError(f"a ranked chart draws at most {MAX_BARS} bars")

    def caption(self) -> str:
        return self.note

    def size(self) -> tuple[int, int]:
        return figure.WIDTH, max(120, 62 + ROW_HEIGHT * len(self.bars) + 10)

    def table(self) -> DataTable:
        columns = [self.label_name, self.value_name]
        if self.behind_name:
            columns.append(self.behind_name)
        if self.highlight_name:
            columns.append(self.highlight_name)
        rows = []
        for bar in self.bars:
            row = [bar.label, figure.exact(bar.value, self.format)]
            if self.behind_name:
                row.append(figure.exact(bar.behind, self.format))
            if self.highlight_name:
                row.append("yes" if bar.highlight else "")
            rows.append(tuple(row))
        return DataTable(tuple(columns), tuple(rows))

    def draw(self, canvas: Canvas) -> None:
        legend = [(self.value_name, figure.PALETTE[0], "box")]
        if self.behind_name:
            legend.append((self.behind_name, figure.LIGHT, "box"))
        if self.highlight_name:
            legend.append((self.highlight_name, figure.ACCENT, "box"))
        canvas.legend(legend)
        label_right = 250.0
        right = figure.WIDTH - (110.0 if self.behind_name else 60.0)
        highest = max((max(b.value, b.behind or 0) for b in self.bars), default=0)
        top_value = (
            self.top_value
            if self.top_value is not None
            else figure.nice_ceiling(highest, self.format)
        )
        scale = (right - label_right - 8) / top_value
        for row, bar in enumerate(self.bars):
            y = 56 + row * ROW_HEIGHT
            canvas.text(
                label_right, y + 13, figure.label(bar.label, 34, middle=True), ' text-anchor="end"'
            )
            x0 = label_right + 8
            if bar.behind is not None:
                canvas.rect(x0, y + 3, min(bar.behind, top_value) * scale, 14, figure.LIGHT)
            colour = figure.ACCENT if bar.highlight else figure.PALETTE[0]
            width = min(bar.value, top_value) * scale
            canvas.rect(x0, y + 3, width, 14, colour)
            end = max(width, (bar.behind or 0) * scale)
            text = figure.short(bar.value, self.format)
            if bar.behind is not None:
                text += " / " + figure.short(bar.behind, self.format)
            canvas.text(x0 + end + 4, y + 14, text, ' class="v"')
        canvas.line(label_right + 8, 50, label_right + 8, 56 + ROW_HEIGHT * len(self.bars))
