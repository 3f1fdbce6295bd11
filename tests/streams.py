"""Synthetic op streams with a known truth, and a runner that feeds them to the outcomes engine
as the flow will: in batches of arrival, with a look-back reader over what has arrived so far.

A stream is built phase by phase: traffic on an endpoint at a steady pace, where each attempt fails
with a given signature at a given rate (signatures are set on failures only, as scenarios set
them, unless told otherwise), and corrections at given times. Every random draw comes from the
stream's own seeded generator, so a stream is the same on every run.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from observer.ops import Op
from observer.outcomes import Assessment, Change, Intervention, OutcomeRule, OutcomeState, assess
from observer.outcomes.frames import CORRECTION_SOURCE, OPS_SCHEMA

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ENDPOINT = "scenario:fill"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Stream:
    """Ops in time order; `pos` is given by arrival (time order). Attempts are kept as columns
    (a week of ops is tens of thousands of rows), corrections as rows."""

    seed: int
    ts: list[int] = field(default_factory=list)
    endpoint: list[str] = field(default_factory=list)
    success: list[bool] = field(default_factory=list)
    sig_hash: list[str | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    corrections: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def traffic(
        self,
        start: datetime,
        end: datetime,
        per_hour: float,
        failing: Mapping[str, float],
        *,
        endpoint: str = ENDPOINT,
        signature_on_success: str | None = None,
        errors: Mapping[str, str] | None = None,
    ) -> Stream:
        """Attempts every 3600/per_hour s in [start, end), each passing the signatures' checks in
        turn: it fails with signature s at rate failing[s] among the attempts that reach s (those
        not failed by an earlier one), else succeeds (carrying `signature_on_success` if given)."""
        step = 3600e6 / per_hour
        at, stop = _micros(start) + step * self.random.random(), _micros(end)
        draw = self.random.random
        texts = {name: (errors or {}).get(name, f"{name} failed") for name in failing}
        table = list(failing.items())
        first = len(self.ts)
        while at < stop:
            failed_with = None
            for signature, rate in table:
                if draw() < rate:
                    failed_with = signature
                    break
            self.ts.append(int(at))
            self.sig_hash.append(failed_with or signature_on_success)
            self.success.append(failed_with is None)
            self.error.append(texts[failed_with] if failed_with else None)
            at += step
        self.endpoint += [endpoint] * (len(self.ts) - first)
        return self

    def correction(
        self, at: datetime, sig_hash: str | None, text: str, task_class: str | None = None
    ) -> Stream:
        """An overseer correction op, written as tail-corrections writes it."""
        self.corrections.append(
            {
                "ts": _micros(at),
                "endpoint": "overseer:gpt-oss:120b",
                "source": CORRECTION_SOURCE,
                "success": True,
                "sig_hash": sig_hash,
                "task_class": task_class,
                "correction": text,
                "error": None,
                "output_summary": text[:200],
                "input_summary": f"{task_class or '?'}: escalation",
            }
        )
        return self

    def frame(self) -> pl.DataFrame:
        """The stream in arrival order, `pos` 0, 1, 2 …"""
        schema = {"ts": pl.Int64} | {k: v for k, v in OPS_SCHEMA.items() if k not in ("pos", "ts")}
        attempts = pl.DataFrame(
            {
                "ts": self.ts,
                "endpoint": self.endpoint,
                "success": self.success,
                "sig_hash": self.sig_hash,
                "error": self.error,
            },
            schema={k: schema[k] for k in ("ts", "endpoint", "success", "sig_hash", "error")},
        ).with_columns(
            pl.lit("scenario").alias("source"),
            pl.lit(None, pl.String).alias("task_class"),
            pl.lit(None, pl.String).alias("correction"),
            pl.when(pl.col("success"))
            .then(pl.lit("filled"))
            .otherwise(pl.lit("failed"))
            .alias("output_summary"),
            (pl.col("endpoint") + " attempt").alias("input_summary"),
        )
        frame = pl.concat(
            [
                attempts.select(list(schema)),
                pl.DataFrame(self.corrections, schema=schema),
            ]
        )
        frame = frame.with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC"))).sort(
            "ts", maintain_order=True
        )
        return frame.with_row_index("pos").with_columns(pl.col("pos").cast(pl.Int64))


#: The op keys a stream's frame carries (besides `ts`, written as the op's `timestamp`).
OP_FIELDS = ("endpoint", "success", "source", "sig_hash", "task_class", "correction", "error")


def as_ops(frame: pl.DataFrame) -> list[Op]:
    """The stream's rows as the ops the webhook and tail-corrections write (for the flow's tests
    through the real files): null columns left out, as absent keys."""
    ops = []
    for row in frame.iter_rows(named=True):
        fields = {name: row[name] for name in OP_FIELDS if row[name] is not None}
        ops.append(
            Op(
                timestamp=row["ts"].isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                input_summary=row["input_summary"],
                output_summary=row["output_summary"],
                duration_ms=5,
                **fields,
            )
        )
    return ops


def _micros(at: datetime) -> float:
    return (at - _EPOCH) // timedelta(microseconds=1)


#: Per signature, (from, to, failure rate) pieces; a later piece overrides an earlier one.
Schedule = Mapping[str, list[tuple[datetime, datetime, float]]]


def piecewise(
    stream: Stream,
    start: datetime,
    end: datetime,
    pace: float,
    schedule: Schedule,
    *,
    paces: list[tuple[datetime, datetime, float]] = (),  # type: ignore[assignment]
    **traffic: Any,
) -> Stream:
    """Traffic on one endpoint from `start` to `end` whose signatures fail as scheduled, at
    `pace` attempts per hour (or as `paces` pieces say)."""
    edges = {start, end}
    for pieces in [*schedule.values(), paces]:
        edges |= {t for low, high, _ in pieces for t in (low, high) if start < t < end}
    times = sorted(edges)
    for low, high in itertools.pairwise(times):
        middle = low + (high - low) / 2
        rates = {
            name: next((r for a, b, r in reversed(pieces) if a <= middle < b), 0.0)
            for name, pieces in schedule.items()
        }
        here = next((r for a, b, r in reversed(paces) if a <= middle < b), pace)
        stream.traffic(low, high, here, rates, **traffic)
    return stream


def reference_spikes(
    names: Iterable[str],
    start: datetime,
    end: datetime,
    base: float,
    spike: float,
    *,
    hours: float = 6,
) -> dict[str, list[tuple[datetime, datetime, float]]]:
    """Signatures that sit at `base` and spike to `spike` for `hours` every 30 hours + `hours`
    (staggered, on 6-hour boundaries from `start`), then fall back by themselves: what nobody
    corrected. Six-hour spikes end where a pre-window would; longer ones run on past it."""
    schedule: dict[str, list[tuple[datetime, datetime, float]]] = {}
    for n, name in enumerate(names):
        pieces = [(start, end, base)]
        at = start + (6 + 6 * n) * HOUR
        while at + hours * HOUR < end:
            pieces.append((at, at + hours * HOUR, spike))
            at += (30 + hours) * HOUR
        schedule[name] = pieces
    return schedule


@dataclass
class Spiky:
    """A spike-triggered stream: the frame, when the correction came, what its effect was."""

    frame: pl.DataFrame
    corrected_at: datetime
    effect: float | None  # the failure rate's factor from the correction on; None: no effect


def spiky_stream(
    seed: int, effect: float | None = None, *, others: int = 5, lasting: bool = False
) -> Spiky:
    """Seven days of an endpoint whose signatures spike now and then and fall back by themselves;
    the key's spike prompts a correction some hours in, while the spike runs its own course.
    Spikes last 2–8 hours (the key's 2–12), or with `lasting` 12–36 hours (the key's too).

    With `effect` None the correction does nothing (a placebo: any fall is regression to the mean);
    else from the correction on the key fails at `effect` × its baseline rate.
    """
    others_hours, key_hours = ((12, 36), (12, 36)) if lasting else ((2, 8), (2, 12))
    stream = Stream(seed)
    rng = stream.random
    pace = rng.uniform(60, 240)
    start = T0 - 7 * 24 * HOUR
    base = {f"R{i}": rng.uniform(0.005, 0.04) for i in range(others)} | {
        "K": rng.uniform(0.005, 0.04)
    }
    spikes: list[tuple[str, datetime, datetime, float]] = []
    for name, rate in base.items():
        if name == "K":
            continue
        at = start + rng.uniform(0, 24) * HOUR
        while at < T0 + 72 * HOUR:
            length = rng.uniform(*others_hours) * HOUR
            spikes.append((name, at, at + length, min(0.5, rate * rng.uniform(5, 15))))
            at += length + rng.uniform(12, 48) * HOUR
    key_start = T0 - rng.uniform(1, 8) * HOUR
    key_end = key_start + rng.uniform(*key_hours) * HOUR
    key_rate = min(0.5, base["K"] * rng.uniform(5, 15))
    boundaries = sorted({start, T0, T0 + 72 * HOUR, key_start, key_end} | _edges(spikes))
    for low, high in itertools.pairwise(boundaries):
        middle = low + (high - low) / 2
        rates = {
            name: next((r for n, s, e, r in spikes if n == name and s <= middle < e), base[name])
            for name in base
        }
        if key_start <= middle < key_end:
            rates["K"] = key_rate
        if effect is not None and middle >= T0:
            rates["K"] = base["K"] * effect
        stream.traffic(low, high, pace, rates)
    stream.correction(T0, "K", "check the staffer's availability before filling")
    return Spiky(stream.frame(), T0, effect)


def _edges(spikes: list[tuple[str, datetime, datetime, float]]) -> set[datetime]:
    return {t for _, s, e, _ in spikes for t in (s, e) if T0 - 7 * 24 * HOUR < t < T0 + 72 * HOUR}


@dataclass
class Outcome:
    """What a run of the engine over a stream left: the state, every change, every call's result."""

    state: OutcomeState
    changes: list[Change]
    assessments: list[Assessment]

    def verdicts(self) -> dict[str, str]:
        """Intervention id → verdict (a member of a joint set: `confounded`)."""
        return {r.id: r.verdict for r in self.state.records()}

    def record(self, intervention_id: str) -> Any:
        return next(r for r in self.state.records() if r.id == intervention_id)


def run(
    frame: pl.DataFrame,
    *,
    until: datetime,
    start: datetime | None = None,
    interventions: Iterable[Intervention] = (),
    rule: OutcomeRule | None = None,
    every: timedelta = timedelta(minutes=30),
    state: OutcomeState | None = None,
    through_json: bool = False,
) -> Outcome:
    """Feed the frame to the engine in arrival batches of `every`, up to `until`, as a scheduled
    flow would; each call's look-back reader sees only what has arrived by then. `through_json`:
    each call starts from the previous state saved as JSON and read back (a restart)."""
    rule = rule or OutcomeRule()
    pending = sorted(interventions, key=lambda i: i.at)
    state = state or OutcomeState()
    start = start or frame["ts"].min()  # type: ignore[assignment]
    changes: list[Change] = []
    assessments: list[Assessment] = []
    now = start
    while now < until:  # type: ignore[operator]
        now = min(now + every, until)  # type: ignore[operator]
        arrived = frame.filter(pl.col("ts") < now)
        new = arrived.filter(pl.col("pos") > (state.last_pos if state.last_pos is not None else -1))
        given = [i for i in pending if i.at < now]
        pending = [i for i in pending if i.at >= now]

        def read(low: datetime, high: datetime, arrived: pl.DataFrame = arrived) -> pl.DataFrame:
            return arrived.filter((pl.col("ts") >= low) & (pl.col("ts") < high))

        if through_json:
            state = OutcomeState.from_json(state.model_dump_json())
        result = assess(state, new, read, given, rule=rule, now=now)
        state = result.state
        changes += result.changes
        assessments.append(result)
    return Outcome(state, changes, assessments)
