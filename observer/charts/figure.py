"""What every chart shares: the SVG it writes, its scales and number formats, and how it renders.

A chart is a frozen dataclass of the numbers it shows. `svg()` draws them; `table()` gives the same
numbers as rows; `image()` is the markdown image (a base64 `data:` URI, the one form both Prefect
UIs render) with its alt text; `markdown()` is the image, its caption and the table. The bytes depend
only on the data: coordinates are rounded to 0.1 px, nothing random or dated is written.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from observer import markdown

WIDTH = 640
HEIGHT = 240
#: An SVG this size is a data URI of at most 10,000 characters (base64 adds a third).
MAX_SVG_BYTES = 7_500

BACKGROUND = "#ffffff"
BORDER = "#d0d5dd"
INK = "#1f2937"
SOFT_INK = "#4b5563"
GRID = "#e5e7eb"
MUTED = "#9ca3af"
#: Okabe and Ito's colours, told apart by most colour-blind readers; on white, all but the last two
#: reach WCAG's 3:1 for graphics.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9")
ACCENT = PALETTE[1]
LIGHT = "#9ec9e8"  # the first colour, lighter: a bar behind another

_STYLE = (
    "text{font-family:system-ui,sans-serif;font-size:13px;fill:" + SOFT_INK + "}"
    ".t{font-size:15px;font-weight:600;fill:" + INK + "}"
    ".v{fill:" + INK + "}"
    ".g{stroke:" + GRID + "}"
    ".l{fill:none;stroke-width:2;stroke-linejoin:round;stroke-linecap:round}"
    ".d{stroke-dasharray:5 4}"
)

Format = Literal["count", "percent", "ms", "bytes", "number"]
XValue = float | datetime


def number(value: float) -> str:
    """A coordinate or value with at most one decimal, `-0` and `.0` left out: stable bytes."""
    text = f"{round(value, 1):.1f}".removesuffix(".0")
    return "0" if text == "-0" else text


def _si(value: float, units: Sequence[tuple[float, str]]) -> str:
    for scale, suffix in units:
        if abs(value) >= scale:
            scaled = value / scale
            return (
                f"{scaled:.1f}".removesuffix(".0") if abs(scaled) < 10 else f"{scaled:.0f}"
            ) + suffix
    return number(value)


_COUNT_UNITS = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
_BYTE_UNITS = ((1024**4, " TB"), (1024**3, " GB"), (1024**2, " MB"), (1024, " kB"))


def short(value: float, fmt: Format) -> str:
    """`value` as an axis or bar label: short (`1.2k`, `85%`, `1.4 s`, `12 MB`)."""
    if fmt == "percent":
        return f"{value * 100:.0f}%"
    if fmt == "ms":
        return (
            f"{value / 1000:.1f}".removesuffix(".0") + " s" if value >= 1000 else f"{value:.0f} ms"
        )
    if fmt == "bytes":
        return _si(value, _BYTE_UNITS) + ("" if abs(value) >= 1024 else " B")
    return _si(value, _COUNT_UNITS)


def exact(value: float | None, fmt: Format) -> str:
    """`value` as a table cell: the number drawn, to the precision the reader needs to check it."""
    if value is None:
        return ""
    if fmt == "percent":
        return f"{value * 100:.1f}%"
    if fmt == "ms":
        return number(value) + " ms"
    if fmt in ("count", "bytes") and float(value).is_integer():
        return str(int(value))
    return number(value)


def nice_ceiling(value: float, fmt: Format = "count") -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above `value` (an axis top that reads well);
    for bytes, in the binary unit the axis will write (`2 MB`, not `1.9 MB`)."""
    if value <= 0:
        return 1.0
    if fmt == "bytes":
        unit = next((scale for scale, _ in _BYTE_UNITS if value >= scale), 1)
        return unit * nice_ceiling(value / unit)
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def _nice(step: float) -> bool:
    mantissa = step / 10 ** math.floor(math.log10(step))
    return any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5, 10))


def ticks(top: float, fmt: Format, counts: Sequence[int] = (4, 5, 2, 1)) -> list[float]:
    """Evenly spaced values from 0 to `top`, in the first of `counts` steps that gives a round
    step (1, 2, 2.5 or 5 × 10^k; whole for counts and bytes: no `1.2` on a count axis)."""
    unit = next((s for s, _ in _BYTE_UNITS if top >= s), 1) if fmt == "bytes" else 1
    for count in counts:
        step = top / count
        whole = fmt not in ("count", "bytes") or (step / unit).is_integer() or step >= 10 * unit
        if step > 0 and _nice(step / unit) and whole:
            return [step * i for i in range(count + 1)]
    return [0.0, top]


def as_x(value: XValue) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def x_text(value: XValue) -> str:
    """An x value in a table or caption: a number, a day (`2026-12-01`) or a time."""
    if not isinstance(value, datetime):
        return number(value)
    moment = value.astimezone(UTC)
    if (moment.hour, moment.minute, moment.second) == (0, 0, 0):
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%d %H:%MZ")


def label(value: str, limit: int, *, middle: bool = False) -> str:
    """A label cut to `limit` characters (an ellipsis says so); `middle` keeps its start and its
    end (names that share a prefix stay told apart)."""
    if len(value) <= limit:
        return value
    if middle:
        head = (limit - 1) * 3 // 5
        return value[:head] + "…" + value[len(value) - (limit - 1 - head) :]
    return value[: limit - 1] + "…"


def text_width(value: str, size: float = 13) -> float:
    """About how wide `value` is in system-ui at `size` px (no font metrics at hand)."""
    return len(value) * size * 0.56


_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml(value: str) -> str:
    """Text safe inside an SVG element or attribute: XML's invalid characters replaced, markup
    characters escaped (a label is outside text)."""
    clean = _XML_INVALID.sub("\ufffd", value)
    return (
        clean.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


class Canvas:
    """An SVG document being written: a solid background, a `<title>`, then elements in order."""

    def __init__(self, title: str, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.width, self.height = width, height
        self.parts: list[str] = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
            f' viewBox="0 0 {width} {height}" role="img">',
            f"<title>{xml(title)}</title>",
            f"<style>{_STYLE}</style>",
            f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6"'
            f' fill="{BACKGROUND}" stroke="{BORDER}"/>',
            f'<text x="16" y="22" class="t">{xml(label(title, 68))}</text>',
        ]

    def add(self, element: str) -> None:
        self.parts.append(element)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, extra: str = "") -> None:
        self.add(
            f'<rect x="{number(x)}" y="{number(y)}" width="{number(w)}" height="{number(h)}"'
            f' fill="{fill}"{extra}/>'
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, extra: str = ' class="g"') -> None:
        self.add(
            f'<line x1="{number(x1)}" y1="{number(y1)}" x2="{number(x2)}" y2="{number(y2)}"{extra}/>'
        )

    def text(self, x: float, y: float, value: str, extra: str = "") -> None:
        self.add(f'<text x="{number(x)}" y="{number(y)}"{extra}>{xml(value)}</text>')

    def legend(self, entries: Sequence[tuple[str, str, str]], y: float = 40) -> None:
        """Swatches and names in a row under the title: (name, colour, "line"/"dash"/"box")."""
        x = 16.0
        for full_name, colour, kind in entries:
            name = label(full_name, 26)
            if kind == "box":
                self.rect(x, y - 8, 10, 10, colour)
            else:
                dash = ' class="l d"' if kind == "dash" else ' class="l"'
                self.add(f'<path d="M{number(x)} {number(y - 3)}h14" stroke="{colour}"{dash}/>')
            self.text(x + 18, y + 1, name)
            x += 18 + text_width(name) + 14
            if x > self.width - 60:
                break

    def render(self) -> str:
        return "".join(self.parts) + "</svg>"


@dataclass(frozen=True)
class DataTable:
    """The numbers of a chart as rows, in the order it draws them."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        return markdown.table(self.columns, self.rows)


class Chart:
    """Base of the charts: subclasses say how to `draw` and what their `table` is."""

    title: str

    def draw(self, canvas: Canvas) -> None:
        raise NotImplementedError

    def table(self) -> DataTable:
        raise NotImplementedError

    def size(self) -> tuple[int, int]:
        return WIDTH, HEIGHT

    def caption(self) -> str:
        """What the picture marks besides the numbers (plain text; empty when nothing)."""
        return ""

    def svg(self) -> str:
        canvas = Canvas(self.title, *self.size())
        self.draw(canvas)
        return canvas.render()

    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.svg().encode()).decode()

    def alt(self) -> str:
        return f"Chart: {self.title}. The numbers are in the table below it."

    def image(self) -> str:
        """The markdown image: escaped alt text, the SVG as a base64 data URI."""
        return f"![{markdown.text(self.alt())}]({self.data_uri()})"

    def markdown(self) -> str:
        """The image, its caption, and the table of the same numbers."""
        parts = [self.image()]
        if caption := self.caption():
            parts.append(markdown.text(caption))
        parts.append(self.table().markdown())
        return "\n\n".join(parts)


@dataclass(frozen=True)
class Plot:
    """The plotting area of a chart in pixels, and its value → pixel mappings."""

    left: float
    top: float
    right: float
    bottom: float

    def y(self, value: float, top_value: float) -> float:
        return self.bottom - (self.bottom - self.top) * (value / top_value if top_value else 0)

    def x(self, value: float, low: float, high: float) -> float:
        if high == low:
            return (self.left + self.right) / 2
        return self.left + (self.right - self.left) * (value - low) / (high - low)

    def y_axis(
        self, canvas: Canvas, top_value: float, fmt: Format, counts: Sequence[int] = (4, 5, 2, 1)
    ) -> None:
        """Horizontal grid lines with their values on the left."""
        for value in ticks(top_value, fmt, counts):
            y = self.y(value, top_value)
            canvas.line(self.left, y, self.right, y)
            canvas.text(self.left - 6, y + 4, short(value, fmt), ' text-anchor="end"')
