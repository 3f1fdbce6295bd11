"""The drawing choice, measured: the charts drawn by hand (`observer.charts`) against pygal, and the
warm template's memory with the charts in it against an earlier commit's template.

`python -m bench charts` (`--runs=N`, default 5; `--quick`: 3) `[--before=REF]`. Every figure is a
fresh interpreter (`python -c`) reporting on itself, the kinds alternating run by run:

- `ours` / `pygal`: seconds to import the drawing code and the VmRSS it adds (both measured after
  `import observer`, which every pipeline has paid already), then seconds to draw the same charts:
  a line chart with a dashed reference and a horizontal bar chart, and the SVG bytes each makes and
  whether two renders of the same data are the same bytes. pygal 3.1.3 is installed once with uv
  into the gitignored `bench/.ref/pygal` (it is not a dependency of the project); it is drawn with
  `js=[]` (no script tag) and its default style.
- `template`: the warm template's warm-up (`observer.worker.template.warm_up` of Prefect, polars
  and the four flows, what `observer up` runs before forking any flow run): seconds, VmRSS and PSS
  afterwards, for this tree and, with `--before=REF`, for the tree of REF (exported with `git
  archive` into a temporary directory and run with the same interpreter and packages).

This machine sets `PYTHONDONTWRITEBYTECODE=1`, so each import compiles its modules; the figures
are what a run pays here, compile included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

from bench.common import Figure

ROOT = Path(__file__).resolve().parent.parent
PYGAL = ROOT / "bench" / ".ref" / "pygal"
PYGAL_VERSION = "3.1.3"

_MEMORY = """
def memory():
    found = {}
    for name in ("/proc/self/status", "/proc/self/smaps_rollup"):
        for line in open(name):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Pss"):
                found[key] = int(value.split()[0]) / 1024
    return found
"""

_DATA = """
from datetime import UTC, datetime, timedelta
days = [datetime(2026, 12, 1, tzinfo=UTC) + timedelta(days=i) for i in range(14)]
rate = [0.42, 0.40, 0.45, 0.41, 0.43, 0.39, 0.44, 0.12, 0.10, 0.08, 0.09, 0.07, 0.08, 0.06]
reference = [0.42 - 0.01 * i for i in range(14)]
groups = [(f"scenario:fill: staffer <num> not found {i}", 40 - 3 * i) for i in range(12)]
"""

#: Times `load()` (the import) and `draw()` (the charts, returned as SVG texts) of a drawing child.
_TIMED = """
import json, sys, time
import observer
before, started = memory(), time.perf_counter()
load()
imported, after = time.perf_counter() - started, memory()
started = time.perf_counter()
first = draw()
drawn = time.perf_counter() - started
print(json.dumps({"import_s": imported, "import_mb": after["VmRSS"] - before["VmRSS"],
                  "draw_s": drawn, "bytes": [len(s.encode()) for s in first],
                  "same_bytes": first == draw()}))
"""

CHILDREN = {
    "ours": _MEMORY
    + _DATA
    + """
def load():
    import observer.charts
def draw():
    from observer.charts import Bar, LineChart, Marker, RankedBars, Series
    line = LineChart(
        title="Failure rate before and after the correction",
        series=[Series("failure rate", list(zip(days, rate))),
                Series("reference decay", list(zip(days, reference)), dashed=True, muted=True)],
        y_format="percent", y_max=1.0, markers=[Marker(days[7], "correction applied")],
    )
    bars = RankedBars(title="Groups by size", bars=[Bar(name, n) for name, n in groups])
    return [line.svg(), bars.svg()]
"""
    + _TIMED,
    "pygal": _MEMORY
    + _DATA
    + """
import sys
sys.path.insert(0, sys.argv[1])
def load():
    import pygal
def draw():
    import pygal
    line = pygal.Line(js=[], width=640, height=240, range=(0, 1), title="Failure rate")
    line.x_labels = [d.strftime("%m-%d") for d in days]
    line.add("failure rate", rate)
    line.add("reference decay", reference, stroke_style={"dasharray": "5, 4"})
    bars = pygal.HorizontalBar(js=[], width=640, height=320, title="Groups by size")
    for name, n in groups:
        bars.add(name, n)
    return [line.render().decode(), bars.render().decode()]
"""
    + _TIMED,
    "template": _MEMORY
    + """
import json, time
from observer.catalog import FLOWS
from observer.worker.template import warm_up
started = time.perf_counter()
warm_up(sorted(entry.module for entry in FLOWS.values()))
seconds = time.perf_counter() - started
found = memory()
print(json.dumps({"seconds": seconds, "rss_mb": found["VmRSS"], "pss_mb": found["Pss"]}))
""",
}


def run_child(kind: str, tree: Path, *args: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for name in [n for n in env if n.startswith("OBSERVER_")]:
        del env[name]
    done = subprocess.run(
        [sys.executable, "-c", CHILDREN[kind], *args],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def install_pygal() -> Path:
    """pygal in bench/.ref/pygal (once), with uv: an ordinary install of one package."""
    if not (PYGAL / "pygal").is_dir():
        uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--target", str(PYGAL), f"pygal=={PYGAL_VERSION}"],
            check=True,
        )
    return PYGAL


def export(ref: str, into: Path) -> Path:
    """The tree of `ref` as files (`git archive`), to run an earlier template beside this one."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _option(options: list[str], name: str) -> str | None:
    prefix = f"--{name}="
    return next((o[len(prefix) :] for o in options if o.startswith(prefix)), None)


def _figure(name: str, results: list[dict[str, object]], key: str, unit: str) -> Figure:
    return Figure(name, [float(r[key]) for r in results], unit)  # type: ignore[arg-type]


def main(options: list[str]) -> int:
    runs = int(_option(options, "runs") or (3 if "--quick" in options else 5))
    before = _option(options, "before")
    pygal_dir = install_pygal()
    workdir = Path(tempfile.mkdtemp(prefix="observer-bench-charts-"))
    try:
        trees = {"this tree": ROOT}
        if before:
            trees[f"before ({before})"] = export(before, workdir / "before")
        drawing: dict[str, list[dict[str, object]]] = {"ours": [], "pygal": []}
        templates: dict[str, list[dict[str, object]]] = {name: [] for name in trees}
        for _ in range(runs):
            drawing["ours"].append(run_child("ours", ROOT))
            drawing["pygal"].append(run_child("pygal", ROOT, str(pygal_dir)))
            for name, tree in trees.items():
                templates[name].append(run_child("template", tree))
        print(f"{runs} runs of each, alternating\n")
        for kind, label in (("ours", "hand-written SVG"), ("pygal", f"pygal {PYGAL_VERSION}")):
            results = drawing[kind]
            print(_figure(f"{label}: import", results, "import_s", "s").line())
            print(_figure(f"{label}: VmRSS added by the import", results, "import_mb", "MB").line())
            print(_figure(f"{label}: draw both charts", results, "draw_s", "s").line())
            last = results[-1]
            print(
                f"{label}: SVG bytes (line, bars) {last['bytes']},"
                f" same data -> same bytes: {last['same_bytes']}\n"
            )
        for name, results in templates.items():
            print(_figure(f"template ({name}): warm-up", results, "seconds", "s").line())
            print(_figure(f"template ({name}): VmRSS", results, "rss_mb", "MB").line())
            print(_figure(f"template ({name}): PSS", results, "pss_mb", "MB").line())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
