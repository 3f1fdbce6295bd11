"""Error analysis: which failures to report, the LLM prompt, the `/log` entry, and what is remembered.

The original re-sent the last 10 failures to the LLM and re-posted its answer every cycle. Here:
- a scheduled run reads only failures after the watermark (`observer.pipelines.failures`), grouped
  (`observer.pipelines.grouping`); a group the LLM already analysed recently is *known*: counted, not re-sent,
  not re-posted (unless `force`);
- LLM answers are cached per model + prompt version + group signature, so a run that failed to
  post does not pay the LLM again on its retry;
- when the LLM stays unusable, a deterministic degraded report (counts per group, marked as not
  LLM-made) is posted instead of nothing;
- the state (watermark, delivered groups) moves only after the gateway took the entry.

State files, in `data/_observer/state/`: `analyze-errors.json` (watermark, delivered groups) and
`analyze-errors-cache.json` (LLM answers).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field, model_validator

from observer import markdown as md
from observer.charts import Chart
from observer.errors import UpstreamError
from observer.files import file_lock, load_state, save_state
from observer.history.reader import OpsReader
from observer.history.stream import StreamMark, stream_end
from observer.ops import now_timestamp
from observer.outcomes import journal
from observer.outcomes.interventions import Intervention
from observer.outcomes.view import OutcomesView, Tally
from observer.pipelines.analysis_charts import (
    Daily,
    DailyFailures,
    count_by_day,
    drawn_daily,
    groups_chart,
    trend_chart,
)
from observer.pipelines.failures import (
    filter_failures,
    read_since,
    read_window,
    start_position,
    window_start,
)
from observer.pipelines.grouping import Group, clean_cut, group_failures
from observer.pipelines.parameters import FlowParameters
from observer.pipelines.report import Artifact
from observer.settings import Settings
from observer.upstream import GenerateRequest, LogEntry, Upstreams

#: Bump when the prompt's wording or layout changes: cached answers to the old prompt stop counting.
PROMPT_VERSION = "groups-v1"
PROMPT_HEAD = (
    "You are a system reliability observer. Analyze these recent failures and suggest fixes:\n"
)
PROMPT_TAIL = (
    "\nFor each error:\n"
    "1. What likely caused it?\n"
    "2. How should the agent adjust its approach?\n"
    '3. Should this be added to the playbook as a "don\'t do this"?\n'
    "Be specific and actionable. Under 200 words."
)
#: The failure lines of a prompt never exceed this many characters, whatever the failures hold.
SUMMARY_BUDGET = 4000
MAX_PROMPT_CHARS = len(PROMPT_HEAD) + SUMMARY_BUDGET + len(PROMPT_TAIL)
GROUP_LINE_CHARS = 400
INPUT_CHARS = 120
ERROR_CHARS = 240
LOG_FIELD_CHARS = 500
#: Before the outcomes of earlier diagnoses in a posted result.
EARLIER_OUTCOMES = " | outcomes of earlier diagnoses of these groups: "
LLM_APPROACH = "LLM-analyzed error patterns"
DEGRADED_APPROACH = "degraded: LLM unavailable, counts only"
MAX_REMEMBERED_GROUPS = 5000
MAX_CACHE_ENTRIES = 2000
#: Groups carried individually through a run (biggest first); the rest only as totals.
MAX_SELECTED_GROUPS = 500

Kind = Literal["nothing", "llm", "cached", "degraded"]


class AnalyzeParameters(FlowParameters):
    """What to analyse and whether to post (the flow's form in the Prefect UI)."""

    since_hours: float | None = Field(
        None, gt=0, description="analyse failures of the last N hours; empty = since last analysis"
    )
    endpoint: str | None = Field(None, description="only this endpoint, e.g. scenario:fill")
    source: str | None = Field(None, description="only this source, e.g. scenario or mcp")
    max_groups: int = Field(20, ge=1, le=200, description="most groups named in one analysis")
    model: str = Field("qwen2.5", min_length=1, description="LLM model for /ai/generate")
    force: bool = Field(False, description="re-analyse and re-post groups analysed before")
    reanalyse_after_hours: float = Field(
        24.0, gt=0, description="a known group recurring after this long is analysed again"
    )
    dry_run: bool = Field(False, description="build and show the analysis, post nothing")
    all_hosts: bool = Field(
        False,
        description="with since_hours: every host's ops in the shared history table, not only"
        " this host's",
    )

    @model_validator(mode="after")
    def _all_hosts_needs_a_window(self) -> AnalyzeParameters:
        if self.all_hosts and self.since_hours is None:
            raise ValueError("all_hosts needs since_hours (the watermark is this host's own)")
        return self

    @property
    def moves_watermark(self) -> bool:
        """Only an unfiltered since-last run may say "everything up to here is analysed"."""
        return self.since_hours is None and self.endpoint is None and self.source is None

    @property
    def label(self) -> str:
        """What the run covers, for its name in the UI's run list."""
        parts = [f"last {self.since_hours:g}h" if self.since_hours else "since last"]
        parts += [
            f"{name}={value}"
            for name, value in (("endpoint", self.endpoint), ("source", self.source))
            if value
        ]
        parts += [flag for flag in ("all_hosts", "force", "dry_run") if getattr(self, flag)]
        return ", ".join(parts)


class GroupRecord(BaseModel):
    """What was delivered about a group; `llm_at` set when an LLM diagnosis was posted."""

    endpoint: str
    pattern: str
    delivered: int = 0
    last_seen: str = ""
    delivered_at: str = ""
    llm_at: str | None = None


class AnalysisState(BaseModel):
    watermark: StreamMark | None = None
    last_batch_start: int | None = None
    groups: dict[str, GroupRecord] = Field(default_factory=dict)
    daily: DailyFailures = Field(default_factory=DailyFailures)


class CacheEntry(BaseModel):
    text: str
    created_at: str


class AnalysisCache(BaseModel):
    entries: dict[str, CacheEntry] = Field(default_factory=dict)


class Selection(BaseModel):
    """The failures of one run, grouped; `fresh` groups are to be reported, `known` ones not."""

    note: str
    start: int
    end: int
    lines: int
    unreadable: int
    failures: int
    fresh: list[Group]
    known: list[Group]
    fresh_groups: int = 0
    fresh_failures: int = 0
    known_failures: int = 0
    watermark: StreamMark | None = None
    daily: DailyFailures = Field(default_factory=DailyFailures)  # drawn: the days up to this run
    fresh_daily: Daily = Field(default_factory=dict)  # this run's, added to the state at commit
    window: tuple[str, str] | None = None  # first and last failure this run read
    #: Per group signature, the verdicts of its earlier diagnoses (assess-outcomes), when known.
    earlier: dict[str, dict[str, int]] = Field(default_factory=dict)

    @property
    def unlisted_fresh(self) -> tuple[int, int]:
        """Fresh groups (and their failures) beyond MAX_SELECTED_GROUPS, counted but not carried."""
        listed = sum(g.count for g in self.fresh)
        return self.fresh_groups - len(self.fresh), self.fresh_failures - listed


class Diagnosis(BaseModel):
    """The outcome of diagnosis: the entry to post (None when there is nothing to report)."""

    kind: Kind
    message: str
    entry: LogEntry | None = None
    prompt: str = ""
    text: str = ""
    shown: list[str] = Field(default_factory=list)
    llm_error: str | None = None
    earlier: str = ""  # how the earlier diagnoses of the groups it names fared, when known


class AnalysisReport(BaseModel):
    """One run: what was read and grouped, what diagnosis it got, and what became of the entry.
    Renders its own artifacts: `markdown()` (the report) and `rows()` (the groups table)."""

    selection: Selection
    diagnosis: Diagnosis
    delivery: str

    def artifacts(self) -> list[Artifact]:
        """The report (markdown) and the groups (table)."""
        selection = self.selection
        return [
            Artifact(
                "analyze-errors-report",
                f"{self.diagnosis.message} — {self.delivery}",
                markdown=self.markdown(),
            ),
            Artifact(
                "analyze-errors-groups",
                f"{selection.failures} failure(s) grouped ({selection.note})",
                table=self.rows() or [{"endpoint": "", "pattern": "(no failures)", "count": 0}],
            ),
        ]

    def rows(self) -> list[dict[str, Any]]:
        """One row per group carried by the run (biggest first), then one row totalling the rest."""
        selection, diagnosis = self.selection, self.diagnosis
        rows: list[dict[str, Any]] = []
        for status, groups in (("new", selection.fresh), ("known", selection.known)):
            for group in groups:
                if status == "known":
                    handling = "known: analysed before, not re-sent"
                elif group.signature in diagnosis.shown:
                    handling = "named in the analysis"
                else:
                    handling = "counted in '… and N more'"
                rows.append(
                    {
                        "endpoint": group.endpoint,
                        "pattern": group.pattern,
                        "count": group.count,
                        "first_seen": group.first_seen,
                        "last_seen": group.last_seen,
                        "sources": ", ".join(group.sources),
                        "sample_error": clean_cut(group.sample_error, 200),
                        "handling": handling,
                        "earlier_outcomes": str(Tally(selection.earlier.get(group.signature, {}))),
                        "signature": group.signature,
                    }
                )
        more_groups, more_failures = selection.unlisted_fresh
        if more_groups:
            rows.append(
                {
                    "endpoint": "…",
                    "pattern": f"{more_groups} more new group(s), not listed",
                    "count": more_failures,
                    "handling": "counted in '… and N more'",
                }
            )
        return rows

    def markdown(self) -> str:
        """The run's report: what was read, its pictures, what the LLM said (or why not), and
        what was posted. Every text that came from outside is escaped (`observer.markdown`)."""
        selection, diagnosis = self.selection, self.diagnosis
        read = f"{selection.note}; positions {selection.start}–{selection.end}"
        if selection.lines >= 0:
            read += f", {selection.lines} line(s)"
        failures = (
            f"{selection.failures}: {selection.fresh_failures} in {selection.fresh_groups}"
            f" new group(s), {selection.known_failures} in groups analysed before"
            if selection.failures
            else "none"
        )
        lines = [
            "# Error analysis",
            "",
            f"- **Outcome:** {md.text(diagnosis.message)}",
            f"- **Delivery:** {md.text(self.delivery)}",
            f"- **Read:** {md.text(read)}",
            f"- **Failures:** {md.text(failures)}",
        ]
        if selection.unreadable:
            lines.append(f"- **Unreadable lines skipped:** {selection.unreadable}")
        if diagnosis.earlier:
            lines.append(
                f"- **Earlier diagnoses of these groups:** {md.text(diagnosis.earlier)}"
                " (assess-outcomes)"
            )
        for title, chart in self.charts():
            lines += ["", f"## {title}", "", chart.markdown()]
        if diagnosis.kind == "degraded":
            lines += [
                "",
                f"> **Degraded report — not made by the LLM** ({md.code(DEGRADED_APPROACH)}).",
                f"> LLM error: {md.text(diagnosis.llm_error or '')}",
            ]
        if diagnosis.text:
            title = "Diagnosis" if diagnosis.kind != "degraded" else "Degraded report (counts only)"
            lines += ["", f"## {title}", "", md.paragraphs(diagnosis.text)]
        if diagnosis.entry is not None:
            lines += [
                "",
                "## `/log` entry",
                "",
                md.block(diagnosis.entry.model_dump_json(indent=2), "json"),
            ]
        return "\n".join(lines) + "\n"

    def charts(self) -> list[tuple[str, Chart]]:
        """The report's pictures with their headings: failures per endpoint per day (when any
        failure is dated), the run's groups by size (when it has groups)."""
        selection = self.selection
        charts: list[tuple[str, Chart]] = []
        trend = trend_chart(
            selection.daily,
            {g.endpoint for g in selection.fresh},
            selection.window,
            datetime.now(UTC).date(),
        )
        if trend.series:
            charts.append(("Failures per day", trend))
        groups = selection.fresh + selection.known
        if groups:
            fresh = {g.signature for g in selection.fresh}
            charts.append(("Groups", groups_chart(groups, fresh)))
        return charts


# ── state files ──────────────────────────────────────────────────────────────────────────────────


def cache_key(model: str, group_signature: str) -> str:
    return hashlib.sha256(f"{model}\0{PROMPT_VERSION}\0{group_signature}".encode()).hexdigest()


# ── selection ────────────────────────────────────────────────────────────────────────────────────


def nothing_new(settings: Settings, params: AnalyzeParameters) -> str | None:
    """Why a since-last run would find nothing to analyse (no op written past the watermark, or
    none yet), or None. A stat and a small state file: a quiet run stops here."""
    if not params.moves_watermark or params.force:
        return None
    checkpoint, end = stream_end(settings)
    if end == 0:
        return "nothing new: no ops yet"
    watermark = load_state(settings.layout.analysis_state, AnalysisState).watermark
    position = watermark.on(settings, checkpoint) if watermark is not None else None
    if position is None or end > position:
        return None
    return f"nothing new: no op written since the last analysis (position {position})"


def select(settings: Settings, query: AnalyzeParameters, now: datetime | None = None) -> Selection:
    """Read, filter and group the failures this run is about; split known from fresh groups."""
    now = now or datetime.now(UTC)
    state = load_state(settings.layout.analysis_state, AnalysisState)
    with OpsReader(settings) as reader:
        if query.since_hours is not None:
            read = read_window(reader, query.since_hours, now, all_hosts=query.all_hosts)
        elif (
            query.force
            and state.last_batch_start is not None
            and state.watermark is not None
            and state.watermark.on(settings) is not None
        ):
            again = "the last analysed batch, again (force)"
            read = read_since(reader, state.last_batch_start, again)
        else:
            start, note = start_position(settings, reader, state.watermark)
            read = read_since(reader, start, note)
        stream = reader.stream
    frame = filter_failures(read.frame, query.endpoint, query.source)
    groups = group_failures(frame)
    recent = window_start(query.reanalyse_after_hours, now)

    def is_known(group: Group) -> bool:
        record = state.groups.get(group.signature)
        return bool(not query.force and record and record.llm_at and record.llm_at >= recent)

    known = [g for g in groups if is_known(g)]
    fresh = [g for g in groups if not is_known(g)]
    cap = MAX_SELECTED_GROUPS
    outcomes = OutcomesView.load(settings.layout.outcomes_view)
    earlier = {
        g.signature: dict(tally)
        for g in fresh[:cap]
        if (tally := outcomes.outcomes_of("diagnosis", endpoint=g.endpoint, pattern=g.pattern))
    }
    read_daily = count_by_day(frame)
    analysed_up_to = state.watermark.on(settings) if state.watermark is not None else None
    counted_before = analysed_up_to is not None and read.start < analysed_up_to
    return Selection(
        note=read.note,
        start=read.start,
        end=read.end,
        lines=read.lines,
        unreadable=read.unreadable,
        failures=frame.height,
        fresh=fresh[:cap],
        known=known[:cap],
        fresh_groups=len(fresh),
        fresh_failures=sum(g.count for g in fresh),
        known_failures=sum(g.count for g in known),
        watermark=StreamMark(stream=stream, position=read.end) if query.moves_watermark else None,
        daily=drawn_daily(
            state.daily, read_daily, counted_before, endpoint=query.endpoint, today=now.date()
        ),
        fresh_daily=read_daily if query.moves_watermark and not counted_before else {},
        window=_time_span(frame),
        earlier=earlier,
    )


def _time_span(frame: pl.DataFrame) -> tuple[str, str] | None:
    """The first and last timestamp among the failures read (ISO strings sort as times)."""
    stamps = frame["timestamp"].drop_nulls()
    return (stamps.min(), stamps.max()) if stamps.len() else None  # type: ignore[return-value]


# ── prompt and entries ───────────────────────────────────────────────────────────────────────────


def group_line(group: Group) -> str:
    """A group as one prompt line, in the original's `[endpoint] input: error` shape plus counts."""
    line = (
        f"[{group.endpoint}] {clean_cut(group.sample_input, INPUT_CHARS)}: "
        f"{clean_cut(group.sample_error, ERROR_CHARS)} "
        f"(×{group.count}, {group.first_seen} … {group.last_seen})"
    )
    return clean_cut(line.replace("\n", " "), GROUP_LINE_CHARS)


def summarise(selection: Selection, max_groups: int) -> tuple[str, list[Group]]:
    """The failure lines of the prompt within SUMMARY_BUDGET, and the groups they name."""
    groups = selection.fresh
    lines: list[str] = []
    shown: list[Group] = []
    reserve = 80  # room for the "… and N more" line
    used = 0
    for group in groups[:max_groups]:
        line = group_line(group)
        if used + len(line) + 1 > SUMMARY_BUDGET - reserve:
            break
        lines.append(line)
        shown.append(group)
        used += len(line) + 1
    hidden_groups = selection.fresh_groups - len(shown)
    if hidden_groups:
        hidden_failures = selection.fresh_failures - sum(g.count for g in shown)
        lines.append(
            f"… and {hidden_groups} more group(s), {hidden_failures} failure(s), not shown"
        )
    return "\n".join(lines), shown


def build_prompt(summary: str) -> str:
    """The original's instruction text around the grouped failure lines."""
    return PROMPT_HEAD + summary + PROMPT_TAIL


def log_entry(
    selection: Selection, approach: str, result: str, summary: str, earlier: str = ""
) -> LogEntry:
    """The `/log` body with the original's four keys and formats (fields cut to 500 characters);
    how the earlier diagnoses of the same groups fared, when known, follows the result after
    ` | ` (`EARLIER_OUTCOMES`), so the original's text is what precedes its last such piece."""
    outcomes = f"{EARLIER_OUTCOMES}{earlier}" if earlier else ""
    return LogEntry(
        operation=f"error_analysis: {selection.fresh_failures} failures",
        approach=approach,
        result=clean_cut(result, LOG_FIELD_CHARS) + outcomes,
        context=clean_cut(summary, LOG_FIELD_CHARS),
    )


def earlier_outcomes(selection: Selection, shown: list[Group]) -> str:
    """How the earlier diagnoses of the groups named fared, all together (`2 worked, 1
    did-not-work`), or "" when none was judged yet."""
    tally = Tally()
    for group in shown:
        tally.update(selection.earlier.get(group.signature, {}))
    return str(tally)


def degraded_text(selection: Selection, reason: str) -> str:
    """The report posted when the LLM is unusable: counts only, deterministic, never LLM-made."""
    head = (
        f"NOT LLM-MADE: the LLM was unavailable ({reason}). {selection.fresh_failures} "
        f"failure(s) in {selection.fresh_groups} group(s), most frequent first: "
    )
    parts: list[str] = []
    used = len(head)
    for g in selection.fresh:
        parts.append(f"[{g.endpoint}] {clean_cut(g.pattern, 160)} ×{g.count}")
        used += len(parts[-1]) + 2
        if used > LOG_FIELD_CHARS:
            break  # the result is cut to 500 characters anyway
    return head + "; ".join(parts)


def failure_reason(error: UpstreamError) -> str:
    """A short, stable reason (no URLs or timings, so the degraded text stays deterministic)."""
    if error.kind == "status":
        what = f"HTTP {error.status}"
    elif error.kind == "invalid":
        what = "invalid reply"
    else:
        what = error.kind
    return f"{what} after {error.attempts} attempt(s)"


# ── diagnosis ────────────────────────────────────────────────────────────────────────────────────


def diagnose(settings: Settings, selection: Selection, query: AnalyzeParameters) -> Diagnosis:
    """Turn the fresh groups into an entry: cached answers, else the LLM, else a degraded report."""
    if not selection.fresh:
        known = selection.known_failures
        message = (
            f"no new failure groups ({selection.failures} failure(s), {known} in known groups)"
            if selection.failures
            else "no new failures"
        )
        return Diagnosis(kind="nothing", message=message)
    summary, shown = summarise(selection, query.max_groups)
    prompt = build_prompt(summary)
    names = [g.signature for g in shown]
    cache = load_state(settings.layout.analysis_cache, AnalysisCache)
    cached = None if query.force else _cached_text(cache, query.model, shown)
    earlier = earlier_outcomes(selection, shown)

    def made(kind: Literal["llm", "cached"], message: str, text: str) -> Diagnosis:
        entry = log_entry(selection, LLM_APPROACH, text, summary, earlier)
        return Diagnosis(
            kind=kind,
            message=message,
            entry=entry,
            prompt=prompt,
            text=text,
            shown=names,
            earlier=earlier,
        )

    if cached is not None:
        message = f"posted the cached LLM analysis of {len(shown)} group(s) (the LLM was not asked)"
        return made("cached", message, cached)
    try:
        text = ask_llm(settings, GenerateRequest(prompt=prompt, model=query.model))
    except UpstreamError as exc:
        reason = failure_reason(exc)
        text = degraded_text(selection, reason)
        entry = log_entry(selection, DEGRADED_APPROACH, text, summary)
        message = (
            f"degraded: LLM unavailable ({reason}); "
            f"a counts-only report of {selection.fresh_groups} group(s) instead"
        )
        return Diagnosis(
            kind="degraded",
            message=message,
            entry=entry,
            prompt=prompt,
            text=text,
            shown=names,
            llm_error=str(exc),
        )
    remember_answer(settings, query.model, shown, text)
    message = f"LLM analysis of {len(shown)} group(s), {selection.fresh_failures} failure(s)"
    return made("llm", message, text)


def ask_llm(settings: Settings, request: GenerateRequest) -> str:
    """The LLM's text (timeouts, 5xx and garbage replies are retried by the client)."""
    with Upstreams(settings) as upstreams:
        return upstreams.generate(request)


def _cached_text(cache: AnalysisCache, model: str, groups: list[Group]) -> str | None:
    """The cached answer(s) if every group has one; several distinct answers are joined."""
    texts: list[str] = []
    for group in groups:
        hit = cache.entries.get(cache_key(model, group.signature))
        if hit is None:
            return None
        if hit.text not in texts:
            texts.append(hit.text)
    return "\n\n".join(texts)


def remember_answer(settings: Settings, model: str, groups: list[Group], text: str) -> None:
    """Cache an LLM answer for each group it covered (before posting: a failed post is not re-paid)."""
    with file_lock(settings.layout.analysis_lock):
        cache = load_state(settings.layout.analysis_cache, AnalysisCache)
        stamp = now_timestamp()
        for group in groups:
            cache.entries[cache_key(model, group.signature)] = CacheEntry(
                text=text, created_at=stamp
            )
        newest = sorted(cache.entries.items(), key=lambda kv: kv[1].created_at, reverse=True)
        cache.entries = dict(newest[:MAX_CACHE_ENTRIES])
        save_state(settings.layout.analysis_cache, cache)


# ── after delivery ───────────────────────────────────────────────────────────────────────────────


def commit(settings: Settings, selection: Selection, report: Diagnosis) -> str | None:
    """Remember what was delivered, and move the watermark over what was read (post succeeded);
    then record each group an LLM diagnosis named as an intervention for assess-outcomes to
    judge. Returns why that record could not be made, if it could not (the delivery stands)."""
    with file_lock(settings.layout.analysis_lock):
        state = load_state(settings.layout.analysis_state, AnalysisState)
        stamp = now_timestamp()
        llm_made = report.kind in ("llm", "cached")
        for group in selection.fresh if report.entry else []:
            record = state.groups.get(group.signature) or GroupRecord(
                endpoint=group.endpoint, pattern=group.pattern
            )
            record.delivered += group.count
            record.last_seen = _later(record.last_seen, group.last_seen)
            record.delivered_at = stamp
            if llm_made and group.signature in report.shown:
                record.llm_at = stamp
            state.groups[group.signature] = record
        for group in selection.known:
            if known := state.groups.get(group.signature):
                known.last_seen = _later(known.last_seen, group.last_seen)
        newest = sorted(state.groups.items(), key=lambda kv: kv[1].last_seen, reverse=True)
        state.groups = dict(newest[:MAX_REMEMBERED_GROUPS])
        if selection.watermark is not None:
            if selection.end > selection.start:
                state.last_batch_start = selection.start
            state.watermark = selection.watermark
            state.daily = state.daily.added(selection.fresh_daily, datetime.now(UTC).date())
        save_state(settings.layout.analysis_state, state)
    if report.entry is None or not llm_made:
        return None
    at = datetime.now(UTC)
    return journal.record(
        settings,
        (
            Intervention.diagnosis(at, group.endpoint, group.pattern, report.text)
            for group in selection.fresh
            if group.signature in report.shown
        ),
    )


def _later(current: str, seen: str) -> str:
    return current if seen == "?" else max(current, seen)
