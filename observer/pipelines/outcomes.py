"""assess-outcomes: judge what is new, keep the judging's state, post its changes once each, show it.

A run reads the ops written since its watermark (`OpsReader.ops_from`: the files on disk, the
history table only when the watermark is older than they are) and the interventions recorded in
the journal since its mark (`observer.outcomes.journal`: the diagnoses and playbook entries
delivered), folds them into the judging's state (`observer.outcomes.assess`, which reads a week of
look-back only when an intervention is new), and posts the terminal verdicts, regressions and
alerts it made to the gateway's `/log`, never `too-early`. Its cost follows what is new, not the
history. The first run (or the first after the ops were replaced: another stream) takes the ops of
the last WINDOW_HOURS as new, so the interventions of the last days are judged at once.

**Exactly once, change-only.** (1) The run commits the engine's state (with the changes it made,
pending), the ops watermark and the journal mark together: the state goes to a file of its own,
`state/assess-outcomes-engine-N.json`, then the checkpoint `state/assess-outcomes.json` that names
it replaces the old one, atomically (the commit point). (2) Each pending change is posted; once
the gateway took it, its id is appended, fsync'd, to `state/assess-outcomes-posted.txt`: it is
acknowledged. The next run applies those ids as it loads the state and empties that file as it
commits. A process that dies after a post and before its id's append (one fsync'd line) has that
change posted again by the next run, as does a post the gateway received but never answered;
anywhere else nothing is posted twice and nothing is lost. Each post names its change's
interventions and rule in `context`, so a gateway can recognise a repeat.

**Quiet runs.** `nothing_new` answers from the checkpoint and two stats (no op written past the
watermark, the journal not grown, nothing waiting to be posted, no window due to close), so the
worker settles a quiet scheduled run without a process. The checkpoint carries `next_due`, the
first time at which time alone decides something (a window closing after 72 h, a watch ending).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, Field

from observer import markdown as md
from observer.errors import OutcomeInputError, UpstreamError
from observer.files import (
    append_durably,
    file_lock,
    load_state,
    save_state,
    truncate_to,
    write_atomic,
)
from observer.history.reader import OpsReader
from observer.history.stream import StreamMark, stream_end
from observer.identity import FileMark
from observer.outcomes import journal
from observer.outcomes.engine import OutcomeState, RunCounts, assess
from observer.outcomes.episodes import Episode
from observer.outcomes.frames import LOOKBACK_COLUMNS, OPS_SCHEMA
from observer.outcomes.records import Change
from observer.outcomes.rule import OutcomeRule
from observer.outcomes.view import InterventionRecord, OutcomesView, key_text
from observer.pipelines.grouping import clean_cut
from observer.pipelines.outcomes_charts import BeforeAfter
from observer.pipelines.parameters import FlowParameters
from observer.pipelines.report import Artifact, Deliveries
from observer.settings import Settings
from observer.upstream import Upstreams, gateway_is_down

#: The op columns the engine reads besides `pos` and `ts`.
OP_COLUMNS = [name for name in OPS_SCHEMA if name not in ("pos", "ts")]
LOOKBACK_READ = [name for name in LOOKBACK_COLUMNS if name not in ("pos", "ts")]
#: Rows of the run's table of interventions (the rest are summed up in a last row).
MAX_TABLE_ROWS = 200
#: `/log` bodies shown in the run's report.
SHOWN_ENTRIES = 5
SUMMARY_CHARS = 300


class AssessParameters(FlowParameters):
    """What an assess-outcomes run shows, and whether it posts (the flow's UI form)."""

    dry_run: bool = Field(
        False, description="judge what is new and show it; post nothing, save nothing"
    )
    recent_hours: float = Field(
        24.0,
        gt=0,
        description="the run's table lists the open interventions and those decided within"
        " this many hours",
    )
    max_charts: int = Field(
        4, ge=0, le=12, description="most before/after charts in the report, one per decided key"
    )

    @property
    def label(self) -> str:
        return "since last, dry_run" if self.dry_run else "since last"


class OutcomesCheckpoint(BaseModel):
    """What a run committed: which engine file holds the judging's state, the ops watermark and the
    journal mark it reached, the changes it left to post, and when time alone decides something
    next. Small: `nothing_new` reads it every cycle."""

    generation: int = 0  # names the engine file (0: none yet)
    ops: StreamMark | None = None
    journal: FileMark | None = None
    pending: list[str] = Field(default_factory=list)  # change ids not acknowledged at commit
    next_due: datetime | None = None
    committed_at: datetime | None = None


# ── the state ───────────────────────────────────────────────────────────────────────────────────


def posted_ids(settings: Settings) -> set[str]:
    """The ids acknowledged since the last commit (a line cut short by a crash is ignored)."""
    try:
        data = settings.layout.outcomes_posted.read_bytes()
    except FileNotFoundError:
        return set()
    ids = set()
    for line in data.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(line)
            if isinstance(value, str):
                ids.add(value)
    return ids


def acknowledge(settings: Settings, change_id: str) -> None:
    """The gateway took the change: record it durably (one fsync'd line, JSON-quoted: ids hold
    outside text)."""
    append_durably(settings.layout.outcomes_posted, orjson.dumps(change_id) + b"\n")


def load(settings: Settings) -> tuple[OutcomesCheckpoint, OutcomeState]:
    """The last commit and the judging's state it names, with the changes acknowledged since
    applied. OutcomeInputError when the checkpoint names a state that is missing or unreadable."""
    layout = settings.layout
    checkpoint = load_state(layout.outcomes_state, OutcomesCheckpoint)
    if checkpoint.generation == 0:
        return checkpoint, OutcomeState()
    path = layout.outcomes_engine(checkpoint.generation)
    try:
        state = OutcomeState.from_json(path.read_bytes())
    except FileNotFoundError:
        raise OutcomeInputError(f"{path} is missing (named by {layout.outcomes_state})") from None
    for change_id in posted_ids(settings):
        state.acknowledge(change_id)
    return checkpoint, state


def commit(
    settings: Settings,
    before: OutcomesCheckpoint,
    state: OutcomeState,
    *,
    ops: StreamMark,
    journal_mark: FileMark | None,
    now: datetime,
) -> OutcomesCheckpoint:
    """Save the state, then the checkpoint naming it (atomic: the commit point); then empty the
    acknowledgements it applied and delete the engine files no checkpoint names."""
    layout = settings.layout
    generation = before.generation + 1
    write_atomic(layout.outcomes_engine(generation), state.model_dump_json().encode())
    checkpoint = OutcomesCheckpoint(
        generation=generation,
        ops=ops,
        journal=journal_mark,
        pending=[change.id for change in state.pending],
        next_due=state.next_due(),
        committed_at=now,
    )
    save_state(layout.outcomes_state, checkpoint)
    truncate_to(layout.outcomes_posted, 0)
    current = layout.outcomes_engine(generation).name
    for stale in layout.state_dir.glob("*assess-outcomes-engine-*"):
        if stale.name != current:
            stale.unlink(missing_ok=True)
    return checkpoint


def nothing_new(
    settings: Settings, params: AssessParameters, now: datetime | None = None
) -> str | None:
    """Why a run would change nothing, or None: no op written past the watermark, no
    intervention recorded since the journal mark, nothing waiting to be posted, and no window
    due to close. The checkpoint and two stats: a quiet run stops here."""
    if params.dry_run:
        return None
    layout = settings.layout
    checkpoint = load_state(layout.outcomes_state, OutcomesCheckpoint)
    ingest, end = stream_end(settings)
    if checkpoint.ops is None:
        if end == 0 and not _journal_grown(settings, None):
            return "nothing new: no op and no intervention recorded yet"
        return None
    position = checkpoint.ops.on(settings, ingest)
    if position is None or end > position:
        return None
    if _journal_grown(settings, checkpoint.journal):
        return None
    if set(checkpoint.pending) - posted_ids(settings):
        return None
    due = checkpoint.next_due
    if due is not None and (now or datetime.now(UTC)) >= due:
        return None
    then = f"; time alone decides something next at {due:%Y-%m-%d %H:%M} UTC" if due else ""
    return (
        f"nothing new: no op written since position {position}, no intervention recorded,"
        f" nothing waiting to be posted{then}"
    )


def _journal_grown(settings: Settings, mark: FileMark | None) -> bool:
    path = settings.layout.interventions_journal
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if mark is None:
        return size > 0
    try:
        return mark.change(path) is not None or size > mark.offset
    except FileNotFoundError:
        return False


# ── judging ─────────────────────────────────────────────────────────────────────────────────────


def judge(
    settings: Settings, params: AssessParameters, *, now: datetime | None = None
) -> OutcomesReport:
    """Fold what is new into the judging's state and commit it (not in a dry run), with the
    view `observer outcomes` prints; the report says what changed and what is left to post."""
    now = now or datetime.now(UTC)
    rule = OutcomeRule.from_settings(settings)
    layout = settings.layout
    with file_lock(layout.outcomes_lock):
        checkpoint, state = load(settings)
        notes: list[str] = []
        with OpsReader(settings) as reader:
            position = checkpoint.ops.on(settings) if checkpoint.ops is not None else None
            if checkpoint.ops is not None and position is None:
                notes.append(
                    "the ops were replaced (another stream): the judging starts over; the"
                    " changes not posted yet are kept"
                )
                state = OutcomeState(pending=state.pending)
            if position is None:
                ops = reader.ops_between(now - rule.window, columns=OP_COLUMNS)
                start, end = None, _complete_end(reader)
                read = f"first run: the ops of the last {rule.window_hours:g} h"
            else:
                ops, end = reader.ops_from(position, columns=["ts", *OP_COLUMNS])
                start, read = position, "since the last run"
            recorded = journal.read_new(settings, checkpoint.journal, compact=not params.dry_run)

            def read_window(low: datetime, high: datetime) -> Any:
                return reader.ops_between(low, high, columns=LOOKBACK_READ)

            assessment = assess(state, ops, read_window, recorded.interventions, rule=rule, now=now)
            stream = reader.stream
        if recorded.note:
            notes.append(recorded.note)
        if recorded.unreadable:
            notes.append(f"{recorded.unreadable} journal line(s) could not be read: skipped")
        state = assessment.state
        records = state.records()
        if not params.dry_run:
            commit(
                settings,
                checkpoint,
                state,
                ops=StreamMark(stream=stream, position=end),
                journal_mark=recorded.mark,
                now=now,
            )
            view = OutcomesView(
                updated_at=now,
                rule_version=rule.version,
                interventions=records,
                alerts=[alert.record() for alert in state.alerts],
            )
            view.save(layout.outcomes_view)
    return OutcomesReport.of(
        state,
        records,
        assessment.changes,
        params,
        now=now,
        read=read,
        start=start,
        end=end,
        counts=assessment.counts,
        recorded=len(recorded.interventions),
        notes=notes,
    )


def _complete_end(reader: OpsReader) -> int:
    """The position just past the last complete line the reader's files hold."""
    tail = reader.files.tail(1)
    if not tail.lines:
        return reader.files.start
    return tail.offsets[-1] + len(tail.lines[-1]) + 1


# ── posting ─────────────────────────────────────────────────────────────────────────────────────


class Delivery(Deliveries, BaseModel):
    """What became of each change to post: `posted`, `failed: …`, `not attempted: …`."""

    ITEMS: ClassVar[str] = "change(s)"
    THEN: ClassVar[str] = "they stay pending and the next run posts them"

    status: dict[str, str] = Field(default_factory=dict)
    gateway_down: bool = False


def post_pending(settings: Settings, changes: list[Change]) -> Delivery:
    """Post, in order, each of `changes` still pending at the last commit and not acknowledged
    since, acknowledging each right after the gateway took it. After the gateway proves down,
    attempt no more; a change it refused (a 4xx) stays pending, and the others go on."""
    delivery = Delivery()
    layout = settings.layout
    with file_lock(layout.outcomes_lock), Upstreams(settings) as upstreams:
        waiting = set(load_state(layout.outcomes_state, OutcomesCheckpoint).pending)
        waiting -= posted_ids(settings)
        for change in changes:
            if change.id not in waiting:
                continue
            if delivery.gateway_down:
                delivery.status[change.id] = "not attempted: the gateway failed on an earlier post"
                continue
            try:
                upstreams.post_log(change.log_entry())
            except UpstreamError as error:
                delivery.status[change.id] = f"failed: {error}"
                delivery.gateway_down = gateway_is_down(error)
                continue
            acknowledge(settings, change.id)
            delivery.status[change.id] = "posted"
    return delivery


# ── the run's report ────────────────────────────────────────────────────────────────────────────


class OutcomesReport(BaseModel):
    """One run: what it read, what changed, what it posted; the interventions open or recently
    decided, and a before/after picture per decided key. Renders its own artifacts."""

    dry_run: bool
    read: str
    start: int | None
    end: int
    counts: RunCounts
    recorded: int  # interventions read from the journal
    notes: list[str] = Field(default_factory=list)
    changes: list[Change] = Field(default_factory=list)  # made by this run
    pending: list[Change] = Field(default_factory=list)  # to post: this run's and earlier ones
    rows: list[dict[str, Any]] = Field(default_factory=list)
    watching: int = 0  # interventions still open (undecided, or watched after `worked`)
    recent: int = 0  # decided within recent_hours
    recent_hours: float = 24.0
    charts: list[BeforeAfter] = Field(default_factory=list)
    undrawn: list[str] = Field(default_factory=list)  # decided keys not drawn
    delivery: Delivery = Field(default_factory=Delivery)

    @classmethod
    def of(
        cls,
        state: OutcomeState,
        records: list[InterventionRecord],
        changes: list[Change],
        params: AssessParameters,
        *,
        now: datetime,
        **facts: Any,
    ) -> OutcomesReport:
        watched = {m.id: e for e in state.open.values() for m in e.members}
        recent_since = now - timedelta(hours=params.recent_hours)
        recent = [r for r in records if (_decided(r) or recent_since) > recent_since]
        recent_ids = {r.id for r in recent}
        open_ = [r for r in records if r.id in watched and r.id not in recent_ids]
        shown = sorted(recent, key=_decided, reverse=True) + sorted(
            open_, key=lambda r: r.at, reverse=True
        )
        rows = [_row(r, watched.get(r.id)) for r in shown[:MAX_TABLE_ROWS]]
        if len(shown) > MAX_TABLE_ROWS:
            rows.append(
                {"kind": "…", "key": f"{len(shown) - MAX_TABLE_ROWS} more, see `observer outcomes`"}
            )
        episodes = {m.id: e for e in state.episodes() for m in e.members}
        charts, undrawn = [], []
        for change in changes:
            if change.kind == "alert" or not change.interventions:
                continue
            first = change.interventions[0]
            episode = episodes.get(first.id)
            if episode is None or any(c.key == key_text(first.key) for c in charts):
                continue
            if len(charts) < params.max_charts:
                rule = state.rules[episode.rule_version]
                charts.append(BeforeAfter.of(episode, first.key, rule, now))
            else:
                undrawn.append(key_text(first.key))
        return cls(
            dry_run=params.dry_run,
            changes=changes,
            pending=list(state.pending),
            rows=rows,
            watching=len(watched),
            recent=len(recent),
            recent_hours=params.recent_hours,
            charts=charts,
            undrawn=undrawn,
            **facts,
        )

    @property
    def to_post(self) -> list[Change]:
        return [] if self.dry_run else self.pending

    @property
    def summary(self) -> str:
        counts = self.counts
        parts = [f"{counts.ops} new op(s), {counts.interventions} new intervention(s)"]
        if self.changes:
            parts.append(
                f"{counts.decided} decided, {counts.regressed} regressed, {counts.alerts} alert(s)"
            )
        else:
            parts.append("nothing decided")
        parts.append(self.delivery_text)
        return "; ".join(parts)

    @property
    def delivery_text(self) -> str:
        if self.dry_run:
            return (
                f"dry run: nothing posted, nothing saved ({len(self.pending)} change(s) would be)"
            )
        delivery = self.delivery
        if not self.pending:
            return "nothing to post"
        text = f"{delivery.count('posted')} of {len(self.pending)} change(s) posted"
        if failed := delivery.count("failed"):
            text += f", {failed} failed"
        if skipped := delivery.count("not attempted"):
            text += f", {skipped} not attempted"
        return text

    def artifacts(self) -> list[Artifact]:
        return [
            Artifact(
                "assess-outcomes",
                f"Interventions: {self.watching} open, {self.recent} decided in the last"
                f" {self.recent_hours:g} h",
                table=self.rows
                or [{"kind": "", "key": "(no open or recently decided intervention)"}],
            ),
            Artifact(
                "assess-outcomes-report", f"Outcomes: {self.summary}", markdown=self.markdown()
            ),
        ]

    def markdown(self) -> str:
        """What the run read and changed, what it posted, then a before/after chart per decided
        key. Keys, advice and summaries are outside text: escaped."""
        counts = self.counts
        positions = (
            f"positions {self.start}–{self.end}"
            if self.start is not None
            else f"up to position {self.end}"
        )
        lines = [
            "# Outcomes" + (" (dry run)" if self.dry_run else ""),
            "",
            f"- **Read:** {md.text(self.read)}; {positions}, {counts.ops} new op(s);"
            f" {self.recorded} diagnosis or playbook entr(y/ies) recorded since the last run",
            f"- **New interventions:** {counts.interventions} ({counts.corrections} correction(s));"
            f" {counts.opened} opened, {counts.joined} joined a set on their key,"
            f" {counts.refreshed} refreshed an open playbook episode",
            f"- **Changed:** {counts.decided} verdict(s), {counts.regressed} regression(s),"
            f" {counts.alerts} alert(s)",
            f"- **Delivery:** {md.text(self.delivery_text)}",
            f"- **Watching:** {self.watching} open intervention(s); {self.recent} decided in the"
            f" last {self.recent_hours:g} h (both in the table `assess-outcomes`)",
        ]
        lines += [f"- {md.text(note)}" for note in self.notes]
        shown = {c.id: c for c in [*self.changes, *self.pending]}
        if shown:
            made = {c.id for c in self.changes}
            rows = [
                (
                    change.kind,
                    change.verdict or "",
                    _change_key(change),
                    clean_cut(change.summary, SUMMARY_CHARS),
                    self._status(change, made),
                )
                for change in shown.values()
            ]
            lines += [
                "",
                "## What changed",
                "",
                md.table(("change", "verdict", "key", "summary", "post"), rows),
            ]
        else:
            lines += ["", "Nothing was decided in this run: nothing to post."]
        if self.charts:
            lines += ["", "## Before and after"]
            for picture in self.charts:
                lines += ["", f"### {md.text(picture.key)} ({md.text(picture.verdict)})", ""]
                lines.append(picture.chart().markdown())
            if self.undrawn:
                lines += [
                    "",
                    f"{len(self.undrawn)} more decided key(s) not drawn: "
                    + md.text(", ".join(self.undrawn[:20])),
                ]
        entries = [change.log_entry() for change in shown.values()][:SHOWN_ENTRIES]
        if entries:
            lines += ["", "## `/log` entries", ""]
            lines += [md.block(entry.model_dump_json(indent=2), "json") for entry in entries]
        return "\n".join(lines) + "\n"

    def _status(self, change: Change, made: set[str]) -> str:
        if self.dry_run:
            return "dry run: not posted"
        status = self.delivery.status.get(change.id, "waiting")
        return status if change.id in made else f"{status} (from an earlier run)"

    def raise_for_delivery(self) -> None:
        self.delivery.raise_for_delivery()


def _decided(record: InterventionRecord) -> datetime | None:
    return record.regressed_at or record.decided_at


def _row(record: InterventionRecord, episode: Episode | None) -> dict[str, Any]:
    if episode is None:
        status = "finished"
    elif episode.decision is None:
        status = "open"
    else:
        status = "watched after worked"
    cells = record.cells()
    return {
        "id": record.id,
        "status": status,
        **cells,
        "advice": clean_cut(record.advice, 120),
    }


def _change_key(change: Change) -> str:
    if change.alert is not None:
        return key_text(change.alert.key.describe())
    return key_text(change.interventions[0].key) if change.interventions else ""
