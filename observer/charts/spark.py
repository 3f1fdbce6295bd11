"""A sparkline: a series as one line of block characters, for a terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
EMPTY = " "


def sparkline(values: Sequence[float]) -> str:
    """One character per value, its height relative to the largest value; zero is a blank (no
    activity reads as a gap) and any value above zero at least the lowest block."""
    highest = max(values, default=0)
    if highest <= 0:
        return EMPTY * len(values)
    steps = len(BLOCKS)
    return "".join(
        EMPTY if value <= 0 else BLOCKS[max(0, math.ceil(value / highest * steps) - 1)]
        for value in values
    )
