"""Playbook consolidation: repeated successes per endpoint become an entry on the gateway's `/log`.

The window is the tail of ops.jsonl (the original's 2000-op memory by default), read backwards, so a
run costs what the window holds, not what the file holds. Evidence per endpoint is computed with
polars. The original re-posted identical entries every 5 cycles forever; here an endpoint's entry is
posted only when it has a success newer than the one its last delivered entry covered. Ops are
identified by their position in the host's stream of ops (`observer.history.stream`), which never
moves, so "newer" needs no trusted clock; another stream (a wiped data dir), or a remembered
position past the window's end, forgets what was posted. The window is read through the one
reader of hot + history ops (`observer.history.reader`): the files hold the newest ops, the table
the older ones a large window reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

import orjson
import polars as pl
from pydantic import BaseModel, Field

from observer import markdown as md
from observer.charts import MAX_BARS, Bar, Chart, RankedBars
from observer.errors import UpstreamError
from observer.files import Tail, file_lock, load_state, save_state
from observer.history.reader import OpsReader
from observer.history.stream import StreamMark, stream_end
from observer.intake.checkpoint import IngestCheckpoint
from observer.jsfmt import UNDEFINED, join_item, js_string, to_fixed_0
from observer.ops import cut, now_timestamp
from observer.outcomes import journal
from observer.outcomes.interventions import Intervention
from observer.outcomes.view import OutcomesView
from observer.pipelines.parameters import FlowParameters
from observer.pipelines.report import Artifact, Deliveries
from observer.settings import Settings
from observer.upstream import LogEntry, Upstreams, gateway_is_down

PATTERN_INPUTS = 3
PATTERN_CHARS = 200
EVIDENCE_SEPARATOR = " | "

Action = Literal["post", "unchanged", "below-threshold"]


class ConsolidateParameters(FlowParameters):
    """What a consolidation run looks at and when it posts (the flow's UI form)."""

    window_ops: int = Field(
        2000, ge=1, le=1_000_000, description="the last N ops of ops.jsonl (the original: 2000)"
    )
    max_age_hours: float | None = Field(
        None, gt=0, description="also leave out ops whose timestamp is older than this"
    )
    min_successes_per_endpoint: int = Field(
        3, ge=1, description="an endpoint needs this many successes in the window"
    )
    min_successes_overall: int = Field(
        5, ge=0, description="nothing is consolidated below this many successes in the window"
    )
    dry_run: bool = Field(False, description="compute and report, post nothing, remember nothing")
    force: bool = Field(False, description="post every qualifying endpoint, changed or not")

    @property
    def label(self) -> str:
        parts = [f"last {self.window_ops} ops"]
        if self.max_age_hours is not None:
            parts.append(f"≤ {self.max_age_hours:g}h old")
        parts += [flag for flag in ("force", "dry_run") if getattr(self, flag)]
        return ", ".join(parts)


class EndpointEvidence(BaseModel):
    """What the window says about one endpoint."""

    endpoint: str
    successes: int
    total: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    first_seen: str | None
    last_seen: str | None
    recent_inputs: list[str]
    last_success_offset: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.total if self.total else 0.0


class EndpointWindow(BaseModel):
    """Every endpoint of the window, with or without successes: what the run page draws."""

    endpoint: str
    ops: int
    successes: int
    p50_ms: float | None
    p95_ms: float | None

    @property
    def success_rate(self) -> float:
        return self.successes / self.ops if self.ops else 0.0


class PlannedEntry(BaseModel):
    """One endpoint's entry and what this run does with it, and why."""

    evidence: EndpointEvidence
    entry: LogEntry
    action: Action
    reason: str
    ops: StreamMark = Field(default_factory=StreamMark)  # the stream and the window's end


class Playbook(BaseModel):
    """A run's view of the window: every endpoint with successes, and the overall decision."""

    ops: StreamMark = Field(default_factory=StreamMark)  # the stream and the window's end
    entries: list[PlannedEntry] = Field(default_factory=list)
    endpoints: list[EndpointWindow] = Field(default_factory=list)  # busiest first
    ops_in_window: int = 0
    successes_in_window: int = 0
    malformed_lines: int = 0
    bytes_read: int = 0
    note: str = ""

    @property
    def to_post(self) -> list[PlannedEntry]:
        return [p for p in self.entries if p.action == "post"]


class PostedMark(BaseModel):
    """What the last delivered entry of an endpoint covered."""

    last_success_offset: int
    successes: int
    result: str
    posted_at: str


class PlaybookState(BaseModel):
    """Persisted between runs: per endpoint, the last delivered entry, and which stream; and
    where the last complete run looked, with which parameters (so unchanged ops are skipped)."""

    ops: StreamMark | None = None
    endpoints: dict[str, PostedMark] = Field(default_factory=dict)
    checked: StreamMark | None = None
    checked_with: str = ""

    def made_from(self, ops: StreamMark) -> bool:
        """Whether the remembered entries were made from this stream, with no position past the
        window's end (positions past it belong to ops that are gone: every mark is suspect)."""
        if self.ops is not None and self.ops.stream != ops.stream:
            return False
        return all(mark.last_success_offset < ops.position for mark in self.endpoints.values())

    def on_current_stream(self, settings: Settings) -> PlaybookState:
        """The state with marks taken before the history (on ops.jsonl itself) moved onto the
        current stream when they still hold (ops.jsonl never sealed since), else forgotten."""
        if self.ops is None or self.ops.legacy is None:
            return self
        checkpoint = load_state(settings.layout.ingest_checkpoint, IngestCheckpoint)
        position = self.ops.on(settings, checkpoint)
        if position is None:
            return PlaybookState()
        current = StreamMark(stream=checkpoint.stream, position=position)
        checked = self.checked.on(settings, checkpoint) if self.checked is not None else None
        return self.model_copy(
            update={
                "ops": current,
                "checked": None
                if checked is None
                else StreamMark(stream=checkpoint.stream, position=checked),
            }
        )

    def covers(self, planned: PlannedEntry) -> bool:
        """Whether an entry covering this evidence was delivered already (by another run)."""
        mark = self.endpoints.get(planned.evidence.endpoint)
        return (
            mark is not None
            and self.made_from(planned.ops)
            and mark.last_success_offset >= planned.evidence.last_success_offset
        )


# ── reading the window ──────────────────────────────────────────────────────────────────────────


WINDOW_SCHEMA = {
    "offset": pl.Int64,
    "timestamp": pl.String,
    "endpoint": pl.String,
    "input_summary": pl.String,
    "success": pl.Boolean,
    "duration_ms": pl.Float64,
}


def window_frame(tail: Tail, max_age_hours: float | None = None) -> tuple[pl.DataFrame, int]:
    """The window's ops as a frame, and how many lines were not ops (skipped, never fatal).

    A file may hold anything (the original's ops, a hand edit): each line is checked on its own.
    `success` counts only when it is `true` (the original also took "false" as a success); an
    endpoint is written as JavaScript would name its group; a non-numeric duration is left out
    of the duration figures.
    """
    columns: dict[str, list[Any]] = {name: [] for name in WINDOW_SCHEMA}
    cutoff = datetime.now(UTC) - timedelta(hours=max_age_hours) if max_age_hours else None
    malformed = 0
    for offset, line in zip(tail.offsets, tail.lines, strict=True):
        try:
            op = orjson.loads(line)
        except orjson.JSONDecodeError:
            malformed += bool(line.strip())
            continue
        if not isinstance(op, dict):
            malformed += 1
            continue
        timestamp = op.get("timestamp")
        if cutoff is not None and not _at_or_after(timestamp, cutoff):
            continue
        duration = op.get("duration_ms")
        columns["offset"].append(offset)
        columns["timestamp"].append(timestamp if isinstance(timestamp, str) else None)
        columns["endpoint"].append(js_string(op.get("endpoint", UNDEFINED)))
        columns["input_summary"].append(join_item(op.get("input_summary")))
        columns["success"].append(op.get("success") is True)
        columns["duration_ms"].append(
            float(duration)
            if isinstance(duration, int | float) and not isinstance(duration, bool)
            else None
        )
    return pl.DataFrame(columns, schema=WINDOW_SCHEMA), malformed


def _at_or_after(timestamp: object, cutoff: datetime) -> bool:
    if not isinstance(timestamp, str):
        return False
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment >= cutoff


def endpoint_evidence(frame: pl.DataFrame) -> list[EndpointEvidence]:
    """Per endpoint with at least one success, in order of its first success in the window."""
    duration = pl.col("duration_ms")
    totals = frame.group_by("endpoint").agg(pl.len().alias("total"))
    evidence = (
        frame.filter(pl.col("success"))
        .group_by("endpoint", maintain_order=True)
        .agg(
            pl.len().alias("successes"),
            duration.mean().alias("mean_ms"),
            duration.quantile(0.5, "linear").alias("p50_ms"),
            duration.quantile(0.95, "linear").alias("p95_ms"),
            pl.col("timestamp").drop_nulls().first().alias("first_seen"),
            pl.col("timestamp").drop_nulls().last().alias("last_seen"),
            pl.col("input_summary").tail(PATTERN_INPUTS).alias("recent_inputs"),
            pl.col("offset").max().alias("last_success_offset"),
        )
        .join(totals, on="endpoint", how="left", maintain_order="left")
    )
    return [EndpointEvidence.model_validate(row) for row in evidence.iter_rows(named=True)]


def window_endpoints(frame: pl.DataFrame) -> list[EndpointWindow]:
    """Per endpoint of the window, busiest first: ops, successes, and the p50/p95 of the successes'
    durations (the figures of the playbook entries)."""
    succeeded = pl.when(pl.col("success")).then(pl.col("duration_ms"))
    summary = (
        frame.group_by("endpoint")
        .agg(
            pl.len().alias("ops"),
            pl.col("success").sum().alias("successes"),
            succeeded.quantile(0.5, "linear").alias("p50_ms"),
            succeeded.quantile(0.95, "linear").alias("p95_ms"),
        )
        .sort(["ops", "endpoint"], descending=[True, False])
    )
    return [EndpointWindow.model_validate(row) for row in summary.iter_rows(named=True)]


# ── the entry ───────────────────────────────────────────────────────────────────────────────────


def log_entry(evidence: EndpointEvidence, earlier: str = "") -> LogEntry:
    """The original's body, byte for byte in its four keys; extra evidence follows `result`'s
    original text after " | ", so `result.split(" | ")[0]` is what the original wrote: the
    window's figures, then, when assess-outcomes judged earlier entries for the endpoint, how they
    fared (`outcomes of earlier entries: 2 worked, 1 did-not-work`)."""
    n, endpoint = evidence.successes, evidence.endpoint
    pattern = "; ".join(evidence.recent_inputs)
    result = f"avg_duration={_ms(evidence.mean_ms)}ms, {n} successes"
    extra = (
        f"success_rate={_percent(evidence)}"
        f", p50={_ms(evidence.p50_ms)}ms, p95={_ms(evidence.p95_ms)}ms"
        f", first_seen={evidence.first_seen or '?'}, last_seen={evidence.last_seen or '?'}"
    )
    if earlier:
        extra += f"{EVIDENCE_SEPARATOR}outcomes of earlier entries: {earlier}"
    return LogEntry(
        operation=f"consolidated: {n} successful {endpoint} calls",
        approach=f"common pattern: {cut(pattern, PATTERN_CHARS)}",
        result=result + EVIDENCE_SEPARATOR + extra,
        context=f"endpoint={endpoint}",
    )


def _ms(value: float | None) -> str:
    # The original summed durations; none usable gave NaN there too.
    return to_fixed_0(value) if value is not None else "NaN"


def _percent(evidence: EndpointEvidence) -> str:
    """`83.3% (5/6)`: successes over all ops of the endpoint in the window."""
    tenths = to_fixed_0(evidence.success_rate * 1000)
    whole, tenth = divmod(int(tenths), 10)
    return f"{whole}.{tenth}% ({evidence.successes}/{evidence.total})"


# ── deciding, posting, remembering ──────────────────────────────────────────────────────────────


def build_playbook(settings: Settings, params: ConsolidateParameters) -> Playbook:
    """Read the window, compute the evidence and decide, per endpoint, whether to post."""
    layout = settings.layout
    with OpsReader(settings) as reader:
        tail = reader.tail(params.window_ops)
        ops = StreamMark(stream=reader.stream, position=tail.end)
    frame, malformed = window_frame(tail, params.max_age_hours)
    state = load_state(layout.playbooks_state, PlaybookState).on_current_stream(settings)
    marks = state.endpoints if state.made_from(ops) else {}
    successes = int(frame["success"].sum())
    playbook = Playbook(
        ops=ops,
        ops_in_window=frame.height,
        successes_in_window=successes,
        malformed_lines=malformed,
        bytes_read=tail.end - tail.start,
        endpoints=window_endpoints(frame),
    )
    overall_ok = successes >= params.min_successes_overall
    if not overall_ok:
        playbook.note = (
            f"{successes} success(es) in the window, fewer than {params.min_successes_overall}:"
            " nothing is consolidated"
        )
    new_counts = _new_successes(frame, marks)
    outcomes = OutcomesView.load(layout.outcomes_view)
    for evidence in endpoint_evidence(frame):
        action, reason = _decide(evidence, marks.get(evidence.endpoint), new_counts, params)
        if not overall_ok and action == "post":
            action, reason = "below-threshold", "too few successes in the window overall"
        earlier = str(outcomes.outcomes_of("playbook", endpoint=evidence.endpoint))
        playbook.entries.append(
            PlannedEntry(
                evidence=evidence,
                entry=log_entry(evidence, earlier),
                action=action,
                reason=reason,
                ops=ops,
            )
        )
    return playbook


def _decide(
    evidence: EndpointEvidence,
    mark: PostedMark | None,
    new_counts: dict[str, int],
    params: ConsolidateParameters,
) -> tuple[Action, str]:
    if evidence.successes < params.min_successes_per_endpoint:
        return "below-threshold", (
            f"{evidence.successes} success(es), fewer than {params.min_successes_per_endpoint}"
        )
    if mark is None:
        return "post", "first entry for this endpoint"
    fresh = new_counts.get(evidence.endpoint, 0)
    if fresh:
        return "post", f"{fresh} new success(es) since the last entry"
    if params.force:
        return "post", "forced (no new success since the last entry)"
    return "unchanged", f"no new success since the entry of {mark.posted_at}"


def _new_successes(frame: pl.DataFrame, marks: dict[str, PostedMark]) -> dict[str, int]:
    """Per endpoint, successes in the window after the one its last entry covered."""
    if not marks:
        return {}
    covered = pl.DataFrame(
        {
            "endpoint": list(marks),
            "covered": [mark.last_success_offset for mark in marks.values()],
        },
        schema={"endpoint": pl.String, "covered": pl.Int64},
    )
    fresh = (
        frame.filter(pl.col("success"))
        .join(covered, on="endpoint", how="inner")
        .filter(pl.col("offset") > pl.col("covered"))
        .group_by("endpoint")
        .agg(pl.len().alias("fresh"))
    )
    return dict(zip(fresh["endpoint"].to_list(), fresh["fresh"].to_list(), strict=True))


def nothing_new(settings: Settings, params: ConsolidateParameters) -> str | None:
    """Why a scheduled run would change nothing (the ops as the last complete run with these
    parameters left them), or None. A stat and a small state file: a quiet run stops here."""
    if params.force or params.dry_run:
        return None
    checkpoint, end = stream_end(settings)
    if end == 0:
        return "nothing new: no ops yet"
    state = load_state(settings.layout.playbooks_state, PlaybookState)
    checked = state.checked.on(settings, checkpoint) if state.checked is not None else None
    if checked is None or state.checked_with != params.label or end > checked:
        return None
    return f"nothing new: no op written since the last consolidation (position {checked})"


def remember_checked(settings: Settings, playbook: Playbook, params: ConsolidateParameters) -> None:
    """A run delivered everything it had to: the next one may skip an unchanged ops.jsonl."""
    if params.dry_run:
        return
    path = settings.layout.playbooks_state
    with file_lock(settings.layout.playbooks_lock):
        state = load_state(path, PlaybookState)
        state.checked, state.checked_with = playbook.ops, params.label
        save_state(path, state)


def deliver(settings: Settings, planned: PlannedEntry, *, force: bool = False) -> str:
    """Post one entry (timeout, retries, status checked by `Upstreams`), then remember it; under
    the playbook lock, so two runs never post the same evidence; then record it as an
    intervention for assess-outcomes to judge. Returns what happened.

    Raises `UpstreamError` when the gateway did not take it; nothing is remembered then, so the
    next run tries again.
    """
    layout = settings.layout
    with file_lock(layout.playbooks_lock):
        state = load_state(layout.playbooks_state, PlaybookState).on_current_stream(settings)
        if not force and state.covers(planned):
            return "posted by another run"
        with Upstreams(settings) as upstreams:
            upstreams.post_log(planned.entry)
        _mark_posted(settings, planned)
    endpoint = planned.evidence.endpoint
    entry = Intervention.playbook(datetime.now(UTC), endpoint, planned.entry.approach)
    problem = journal.record(settings, [entry])
    return "posted" if problem is None else f"posted, but {problem}"


def _mark_posted(settings: Settings, planned: PlannedEntry) -> None:
    path = settings.layout.playbooks_state
    state = load_state(path, PlaybookState).on_current_stream(settings)
    if not state.made_from(planned.ops):
        state = PlaybookState()
    state.ops = planned.ops
    state.endpoints[planned.evidence.endpoint] = PostedMark(
        last_success_offset=planned.evidence.last_success_offset,
        successes=planned.evidence.successes,
        result=planned.entry.result,
        posted_at=now_timestamp(),
    )
    save_state(path, state)


# ── the run's report ────────────────────────────────────────────────────────────────────────────


class ConsolidationReport(Deliveries, BaseModel):
    """What one run did, per endpoint: posted, failed, not attempted, unchanged, below threshold.
    Renders its own artifacts: `rows()` (the playbook table) and `markdown()` (the changes)."""

    ITEMS: ClassVar[str] = "entr(y/ies)"
    THEN: ClassVar[str] = "they stay unposted and the next run tries again"

    dry_run: bool = False
    ops_in_window: int = 0
    successes_in_window: int = 0
    malformed_lines: int = 0
    note: str = ""
    status: dict[str, str] = Field(default_factory=dict)
    playbook: Playbook = Field(default_factory=Playbook, exclude=True)
    gateway_down: bool = Field(False, exclude=True)  # a post failed as a gateway that is down

    @classmethod
    def planned(cls, playbook: Playbook, *, dry_run: bool) -> ConsolidationReport:
        """The report before any post: each endpoint's decision (`would post` in a dry run)."""
        report = cls(
            dry_run=dry_run,
            ops_in_window=playbook.ops_in_window,
            successes_in_window=playbook.successes_in_window,
            malformed_lines=playbook.malformed_lines,
            note=playbook.note,
            status={p.evidence.endpoint: p.action for p in playbook.entries},
            playbook=playbook,
        )
        if dry_run:
            report.status.update({p.evidence.endpoint: "would post" for p in playbook.to_post})
        return report

    def artifacts(self) -> list[Artifact]:
        """The playbook (table) and what this run changed (markdown)."""
        playbook = self.playbook
        return [
            Artifact(
                "consolidate-playbooks",
                f"Playbook: {len(playbook.entries)} endpoint(s) with successes in a window of"
                f" {playbook.ops_in_window} op(s)",
                table=self.rows(),
            ),
            Artifact(
                "consolidate-playbooks-changes",
                "What this consolidation run posted, or would have, and what failed",
                markdown=self.markdown(),
            ),
        ]

    def rows(self) -> list[dict[str, Any]]:
        """One row per endpoint with successes: its status and its entry."""
        return [
            {
                "endpoint": p.evidence.endpoint,
                "status": self.status.get(p.evidence.endpoint, p.action),
                "successes": p.evidence.successes,
                "ops": p.evidence.total,
                "result": p.entry.result,
                "approach": p.entry.approach,
            }
            for p in self.playbook.entries
        ]

    def markdown(self) -> str:
        """A short account of the run: counts, each endpoint whose entry was (to be) posted, then
        the window's endpoints drawn. Endpoints, reasons and results are escaped (outside text)."""
        verb = "would post" if self.dry_run else "posted"
        playbook = self.playbook
        lines = [
            "# Playbook changes" + (" (dry run)" if self.dry_run else ""),
            "",
            f"- window: {playbook.ops_in_window} op(s), {playbook.successes_in_window} success(es)",
            f"- {verb}: {self.count('posted') + self.count('would post')},"
            f" failed: {self.count('failed')}, not attempted: {self.count('not attempted')},"
            f" unchanged: {self.count('unchanged')}, below threshold: {self.count('below')}",
        ]
        if playbook.note:
            lines.append(f"- {md.text(playbook.note)}")
        if playbook.malformed_lines:
            lines.append(
                f"- {playbook.malformed_lines} malformed line(s) in the window were skipped"
            )
        if changed := playbook.to_post:
            rows = [
                (
                    planned.evidence.endpoint,
                    self.status.get(planned.evidence.endpoint, ""),
                    planned.reason,
                    planned.entry.result,
                )
                for planned in changed
            ]
            lines += ["", md.table(("endpoint", "outcome", "why", "result"), rows)]
        else:
            lines += ["", "Nothing changed since the last entries: nothing was posted."]
        for title, chart in window_charts(playbook.endpoints):
            lines += ["", f"## {title}", "", chart.markdown()]
        return "\n".join(lines) + "\n"


def window_charts(endpoints: list[EndpointWindow]) -> list[tuple[str, Chart]]:
    """The window's busiest endpoints: their success rate, and the p50/p95 of their successes."""
    if not endpoints:
        return []
    shown, rest = endpoints[:MAX_BARS], endpoints[MAX_BARS:]
    note = f"{len(rest)} quieter endpoint(s) are not drawn." if rest else ""
    rates = RankedBars(
        title="Success rate per endpoint in the window",
        bars=[Bar(f"{e.endpoint} ({e.successes}/{e.ops})", e.success_rate) for e in shown],
        label_name="endpoint (successes/ops)",
        value_name="success rate",
        format="percent",
        top_value=1.0,
        note=note,
    )
    timed = [e for e in shown if e.p50_ms is not None and e.p95_ms is not None]
    charts: list[tuple[str, Chart]] = [("Success rate", rates)]
    if timed:
        latency = RankedBars(
            title="Latency of the successes per endpoint: p50, and p95 behind it",
            bars=[Bar(e.endpoint, e.p50_ms or 0.0, behind=e.p95_ms) for e in timed],
            label_name="endpoint",
            value_name="p50",
            behind_name="p95",
            format="ms",
        )
        charts.append(("Latency", latency))
    return charts


def post_changed(
    playbook: Playbook, report: ConsolidationReport, post: Callable[[PlannedEntry], str]
) -> None:
    """Post the changed entries in order with `post` (one delivery step each); after the gateway
    proves down (a 5xx, a timeout, anything but a refusal of that one entry), attempt no more."""
    gateway_down = ""
    for planned in playbook.to_post:
        endpoint = planned.evidence.endpoint
        if gateway_down:
            report.status[endpoint] = f"not attempted: {gateway_down}"
            continue
        try:
            report.status[endpoint] = post(planned)
        except Exception as error:  # any failure: not remembered, the next run posts it again
            report.status[endpoint] = f"failed: {error}"
            if gateway_is_down(error) or not isinstance(error, UpstreamError):
                gateway_down = "the gateway failed on an earlier entry"
                report.gateway_down = report.gateway_down or gateway_is_down(error)
