"""A line chart: values over time (or over attempts), with shaded spans and vertical markers."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from observer.charts import figure
from observer.charts.figure import Canvas, Chart, DataTable, Format, Plot, XValue

MAX_SERIES = len(figure.PALETTE)
#: Points in all series together: what keeps the SVG within its size budget.
MAX_POINTS = 360
SPAN_FILL = "#e8eef6"
#: Distinct x values closer than this (px) are not each a tick: their labels would overlap.
MIN_TICK_GAP = 36


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points in x order (`y` None leaves a gap). `dashed` and `muted` (grey) draw
    a reference or context line beside the main ones."""

    name: str
    points: Sequence[tuple[XValue, float | None]]
    dashed: bool = False
    muted: bool = False


@dataclass(frozen=True)
class Marker:
    """A vertical line at `at`, named (an intervention, a deploy)."""

    at: XValue
    label: str


@dataclass(frozen=True)
class Span:
    """A shaded stretch of x from `start` to `end`, named (the window a run analysed)."""

    start: XValue
    end: XValue
    label: str


@dataclass(frozen=True)
class LineChart(Chart):
    title: str
    series: Sequence[Series]
    x_name: str = "x"
    y_format: Format = "count"
    y_max: float | None = None
    markers: Sequence[Marker] = ()
    spans: Sequence[Span] = ()

    def __post_init__(self) -> None:
        if len(self.series) > MAX_SERIES:
            raise ValueError(f"a line chart draws at most {MAX_SERIES} series")
        if sum(len(s.points) for s in self.series) > MAX_POINTS:
            raise ValueError(f"a line chart draws at most {MAX_POINTS} points in all")

    def _xs(self) -> list[XValue]:
        """Every x of the series, once, in order (the table's rows)."""
        seen: dict[float, XValue] = {}
        for series in self.series:
            for x, _ in series.points:
                seen.setdefault(figure.as_x(x), x)
        return [seen[key] for key in sorted(seen)]

    def table(self) -> DataTable:
        values = [{figure.as_x(x): y for x, y in series.points} for series in self.series]
        rows = tuple(
            (
                figure.x_text(x),
                *(figure.exact(v.get(figure.as_x(x)), self.y_format) for v in values),
            )
            for x in self._xs()
        )
        return DataTable((self.x_name, *(s.name for s in self.series)), rows)

    def caption(self) -> str:
        parts = [
            f"Shaded: {s.label} ({figure.x_text(s.start)} to {figure.x_text(s.end)})."
            for s in self.spans
        ]
        parts += [f"Line: {m.label} at {figure.x_text(m.at)}." for m in self.markers]
        return " ".join(parts)

    def colours(self) -> list[str]:
        colours, free = [], iter(figure.PALETTE)
        for series in self.series:
            colours.append(figure.MUTED if series.muted else next(free))
        return colours

    def draw(self, canvas: Canvas) -> None:
        colours = self.colours()
        canvas.legend(
            [
                (s.name, colour, "dash" if s.dashed else "line")
                for s, colour in zip(self.series, colours, strict=True)
            ]
        )
        plot = Plot(left=58, top=58, right=figure.WIDTH - 30, bottom=figure.HEIGHT - 30)
        xs = [figure.as_x(x) for x in self._xs()]
        xs += [figure.as_x(m.at) for m in self.markers]
        xs += [figure.as_x(v) for s in self.spans for v in (s.start, s.end)]
        low, high = (min(xs), max(xs)) if xs else (0.0, 1.0)
        highest = max((y for s in self.series for _, y in s.points if y is not None), default=0.0)
        top = self.y_max if self.y_max is not None else figure.nice_ceiling(highest, self.y_format)
        for span in self.spans:
            start = plot.x(figure.as_x(span.start), low, high)
            end = max(plot.x(figure.as_x(span.end), low, high), start + 4)
            canvas.rect(start, plot.top, end - start, plot.bottom - plot.top, SPAN_FILL)
            canvas.text(
                min(start, plot.right - 80) + 3, plot.top + 12, figure.label(span.label, 24)
            )
        plot.y_axis(canvas, top, self.y_format)
        self._x_axis(canvas, plot, low, high)
        for series, colour in zip(self.series, colours, strict=True):
            self._line(canvas, plot, series, colour, low, high, top)
        for marker in self.markers:
            x = plot.x(figure.as_x(marker.at), low, high)
            canvas.line(x, plot.top - 4, x, plot.bottom, ' stroke="#1f2937" class="d"')
            canvas.text(x + 4, plot.top + 24, figure.label(marker.label, 24), ' class="v"')

    def _x_axis(self, canvas: Canvas, plot: Plot, low: float, high: float) -> None:
        """The distinct x values as ticks when few and far enough apart to be read, else six
        evenly spaced ones."""
        distinct = [figure.as_x(x) for x in self._xs()]
        places = [plot.x(value, low, high) for value in distinct]
        apart = all(b - a >= MIN_TICK_GAP for a, b in itertools.pairwise(places))
        few = len(distinct) <= 10 and apart
        marks = distinct if few else [low + (high - low) * i / 5 for i in range(6)]
        timed = any(isinstance(x, datetime) for s in self.series for x, _ in s.points)
        for value in marks:
            canvas.text(
                plot.x(value, low, high),
                plot.bottom + 16,
                _tick(value, high - low) if timed else figure.number(value),
                ' text-anchor="middle"',
            )
        canvas.line(plot.left, plot.bottom, plot.right, plot.bottom, f' stroke="{figure.MUTED}"')

    def _line(
        self,
        canvas: Canvas,
        plot: Plot,
        series: Series,
        colour: str,
        low: float,
        high: float,
        top: float,
    ) -> None:
        path: list[str] = []
        dots: list[tuple[float, float]] = []
        pen_down = False
        for x_value, y_value in series.points:
            if y_value is None:
                pen_down = False
                continue
            x, y = plot.x(figure.as_x(x_value), low, high), plot.y(min(y_value, top), top)
            path.append(f"{'L' if pen_down else 'M'}{figure.number(x)} {figure.number(y)}")
            dots.append((x, y))
            pen_down = True
        if not path:
            return
        kind = "l d" if series.dashed else "l"
        canvas.add(f'<path d="{"".join(path)}" stroke="{colour}" class="{kind}"/>')
        if len(series.points) <= 40:
            circles = "".join(
                f'<circle cx="{figure.number(x)}" cy="{figure.number(y)}" r="2.5"/>'
                for x, y in dots
            )
            canvas.add(f'<g fill="{figure.xml(colour)}">{circles}</g>')


def _tick(timestamp: float, extent: float) -> str:
    """A time tick: the day (`12-01`) over a range of a day and a half or more, else the time."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.strftime("%m-%d" if extent >= 36 * 3600 else "%H:%M")
