"""A sparkline: a series as one line of block characters, for a terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
EMPTY = " "


def sparkline(values: Sequence[float], top: float | None = None) -> str:
    """One character per value, its height relative to `top` (the largest value by default: pass
    another series' top to draw a part of it, failures against ops); zero is a blank (no activity
    reads as a gap) and any value above zero at least the lowest block."""
    highest = max(values, default=0) if top is None else top
    if highest <= 0:
        return EMPTY * len(values)
    steps = len(BLOCKS)
    return "".join(
        EMPTY if value <= 0 else BLOCKS[min(steps, max(1, math.ceil(value / highest * steps))) - 1]
        for value in values
    )
