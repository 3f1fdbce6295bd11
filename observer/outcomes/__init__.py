"""Did it work? Every correction, diagnosis and playbook entry judged by what happened after it.

The engine is plain functions over polars frames and pydantic models; the flow that runs it,
its posts and the `observer outcomes` command sit on top. One entry point:

    assessment = assess(state, new_ops, read_window, interventions, rule=rule, now=now)
    assessment.state      # save it (JSON); `state.pending` are the changes not posted yet
    assessment.changes    # this call's terminal verdicts, regressions and alerts (never too-early)
    assessment.records()  # one record per intervention kept, for tables and reports

Inputs: `new_ops`, the ops that arrived since the last call (columns of `frames.OPS_SCHEMA`, the
history table's names and types; `pos` orders them); `interventions`, the diagnoses and playbook
entries posted since (`Intervention.diagnosis`, `Intervention.playbook`; corrections are found
among the ops); `read_window(start, end)`, the ops with `start <= ts < end` from wherever they are
kept (hot file and history table), of which only `LOOKBACK_COLUMNS` are used (a reader may return
just those: a week of ops is big).

**What it reads, when.** Steady state, nothing but the new ops. When a call finds new
interventions, one look-back read: `[t_first − BASELINE_DAYS, t_newest + 1 µs)`, where `t_first`
is the earliest new intervention's time and `t_newest` the latest of `now`, the newest new op and
the newest op folded in before. With the defaults that is the 7 days before the intervention (its
6-hour pre-window, the baseline and the spikes of other signatures) plus the minutes since it: 8
day partitions for an intervention found on the day it happened (one more per day it is late).
Nothing is read twice for the same intervention, and nothing older than `t_first − BASELINE_DAYS`.

Time windows around an intervention at `t0` (all settings, `OBSERVER_OUTCOMES_*`):

    baseline   [t0 − BASELINE_DAYS, t0 − PRE_HOURS)   the key's own longer rate; spikes of others
    pre        [t0 − PRE_HOURS, t0)                   the episode that prompted it ("before")
    in flight  [t0, t0 + LAG_SECONDS)                 not counted
    post       [t0 + LAG_SECONDS, min(t0 + WINDOW_HOURS, next intervention on the key))
    watch      after `worked`, WATCH_DAYS             CUSUM for the old rate's return
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from observer.outcomes.advice import ALERT_HINT, Alert
    from observer.outcomes.engine import (
        Assessment,
        OutcomeState,
        ReadWindow,
        RunCounts,
        assess,
    )
    from observer.outcomes.frames import LOOKBACK_COLUMNS, OPS_SCHEMA
    from observer.outcomes.interventions import Intervention, Key
    from observer.outcomes.records import Change
    from observer.outcomes.rule import OutcomeRule
    from observer.outcomes.view import InterventionRecord, Verdict

#: Where each name of the package lives: imported on first use, so that `observer.outcomes.view`
#: (what `observer outcomes` reads) loads without the engine and polars.
_HOMES = {
    "ALERT_HINT": "advice",
    "Alert": "advice",
    "Assessment": "engine",
    "OutcomeState": "engine",
    "ReadWindow": "engine",
    "RunCounts": "engine",
    "assess": "engine",
    "LOOKBACK_COLUMNS": "frames",
    "OPS_SCHEMA": "frames",
    "Intervention": "interventions",
    "Key": "interventions",
    "Change": "records",
    "OutcomeRule": "rule",
    "InterventionRecord": "view",
    "Verdict": "view",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "ALERT_HINT",
    "LOOKBACK_COLUMNS",
    "OPS_SCHEMA",
    "Alert",
    "Assessment",
    "Change",
    "Intervention",
    "InterventionRecord",
    "Key",
    "OutcomeRule",
    "OutcomeState",
    "ReadWindow",
    "RunCounts",
    "Verdict",
    "assess",
]
