"""Run the benchmarks: `python -m bench` runs all, `python -m bench webhook tail` some."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "webhook",
    "hostile",
    "lag",
    "idle",
    "runcost",
    "ingest",
    "tail",
    "analyze",
    "consolidate",
    "history",
    "charts",
    "outcomes",
)


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(BENCHMARKS)
    options = [a for a in argv if a.startswith("-")]
    status = 0
    for name in names:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; one of {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        print(f"\n=== {name} ===", flush=True)
        status |= importlib.import_module(f"bench.{name}").main(options)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
