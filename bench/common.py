"""Shared helpers for the benchmarks: repeated runs, medians, ratios against a same-run baseline."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from observer.intake.spool import PREALLOCATE_BYTES


@dataclass
class Figure:
    """Several runs of one measurement; quote the median."""

    name: str
    values: list[float]
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def line(self) -> str:
        low, high = min(self.values), max(self.values)
        return f"{self.name:<48} median {self.median:>12.4g} {self.unit:<6} (min {low:.4g}, max {high:.4g}, n={len(self.values)})"


class AllocatedFile:
    """A file allocated ahead and written the spool's way: each record `pwrite` into the allocated
    space and made durable with `fdatasync`, wrapping around so that the file's size never changes
    (the raw cost of a durable write, for the webhook benchmark's baselines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        self.end = 0
        os.posix_fallocate(self.fd, 0, PREALLOCATE_BYTES)
        os.fsync(self.fd)

    def write_durably(self, record: bytes) -> None:
        offset = self.end if self.end + len(record) <= PREALLOCATE_BYTES else 0
        os.pwrite(self.fd, record, offset)
        os.fdatasync(self.fd)
        self.end = offset + len(record)

    def close(self) -> None:
        os.close(self.fd)


def repeat(name: str, runs: int, measure: Callable[[], float], unit: str = "s") -> Figure:
    """Run `measure` `runs` times (it returns one value each time)."""
    return Figure(name, [measure() for _ in range(runs)], unit)


def stopwatch(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ratio_line(label: str, ours: Figure, baseline: Figure) -> str:
    """Observer / baseline, from the medians of runs made in the same invocation."""
    return f"{label:<48} ratio {ours.median / baseline.median:>8.3f}  ({ours.median:.4g} / {baseline.median:.4g} {ours.unit})"


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory in MB: of this process, or (from /proc) of another running one."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def rss_mb(pid: int) -> float:
    """Current resident memory of a running process in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
