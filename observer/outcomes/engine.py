"""The entry point: `assess(state, ops, read_window, interventions, rule=…, now=…)`.

One call folds in what is new since the last one and returns the next state, the changes to post
and the counts of the run. Its cost follows what is new, not the history:

- the **new ops** (`pos` above the state's `last_pos`; the rest is dropped, so a rerun with the same
  ops changes nothing) are matched to the open episodes' keys and fed to them in time order;
- a **look-back window** is read only when new interventions arrive (see the package docstring for
  its exact span), once per call, for their openings and for the ops of their post windows that were
  folded in before they arrived;
- time passing closes windows (72 h, or the next intervention on the key), takes the looks of
  episodes whose exposure is hours, and ends the watch after `worked`.

The state is plain pydantic (JSON), carries every rule its episodes were opened under, and keeps
the changes not yet acknowledged (`pending`): the poster sends each, then calls `acknowledge(id)`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field, ValidationError

from observer.errors import OutcomeInputError
from observer.outcomes.advice import AdviceCluster, Alert, check_cluster, cluster_for
from observer.outcomes.episodes import HOUR, Episode, spec_id
from observer.outcomes.frames import (
    CORRECTION_SOURCE,
    LOOKBACK_COLUMNS,
    START_SCHEMA,
    Contribution,
    Spec,
    attempts,
    compress,
    conform,
    contributions,
    is_attempt,
    with_patterns,
)
from observer.outcomes.interventions import Intervention, Key, corrections_in
from observer.outcomes.lookback import Opening, open_episode, touched_keys
from observer.outcomes.records import (
    Change,
    InterventionRecord,
    alert_change,
    records_of,
    verdict_change,
)
from observer.outcomes.rule import OutcomeRule

#: `read_window(start, end)`: the ops with `start <= ts < end`, as a frame (history + hot ops).
ReadWindow = Callable[[datetime, datetime], pl.DataFrame]

STATE_FORMAT = 1
_MICROSECOND = timedelta(microseconds=1)


class OutcomeState(BaseModel):
    """Everything the engine remembers between runs (JSON-serialisable; see `from_json`)."""

    format: int = STATE_FORMAT
    rules: dict[str, OutcomeRule] = Field(default_factory=dict)  # by version
    last_pos: int | None = None  # the newest op folded in
    clock: datetime | None = None  # the newest op time folded in
    open: dict[str, Episode] = Field(default_factory=dict)  # by key id: undecided or watched
    done: list[Episode] = Field(default_factory=list)  # finished, kept RETENTION_DAYS
    clusters: dict[str, AdviceCluster] = Field(default_factory=dict)
    alerts: list[Alert] = Field(default_factory=list)
    seen: dict[str, datetime] = Field(default_factory=dict)  # intervention ids → their time
    pending: list[Change] = Field(default_factory=list)  # changes not acknowledged yet

    @classmethod
    def from_json(cls, data: str | bytes) -> OutcomeState:
        """A saved state; OutcomeInputError when it is not one (or of another format)."""
        try:
            state = cls.model_validate_json(data)
        except ValidationError as exc:
            raise OutcomeInputError(f"not an outcomes state: {exc.errors()[0]['msg']}") from None
        if state.format != STATE_FORMAT:
            raise OutcomeInputError(
                f"outcomes state of format {state.format}; this Observer reads {STATE_FORMAT}"
            )
        return state

    def acknowledge(self, change_id: str) -> None:
        """The change was posted: it is not pending any more."""
        self.pending = [c for c in self.pending if c.id != change_id]

    def episodes(self) -> list[Episode]:
        """Open episodes, then the finished ones still kept, oldest first."""
        return sorted([*self.open.values(), *self.done], key=lambda e: (e.members[0].at, e.id))

    def next_due(self) -> datetime | None:
        """The first time at which time alone changes the state, with no new op or intervention:
        a window closing, a look of an episode whose exposure is hours, a watch ending, or what is
        kept running out of RETENTION_DAYS (see `_Run._settle` and `_Run._prune`). None when
        nothing waits for time. A caller that runs only when something is new runs from then on."""
        due: list[datetime] = []
        for episode in self.open.values():
            rule = self.rules[episode.rule_version]
            if episode.decision is None:
                due.append(episode.window_end + rule.lag)
                looks = rule.look_exposures
                if episode.opening.unit == "hours" and len(episode.looks) < len(looks):
                    due.append(episode.post_start + looks[len(episode.looks)] * HOUR + rule.lag)
            elif episode.watch is not None:
                due.append(episode.watch.until)
        for episode in self.done:
            rule = self.rules.get(episode.rule_version)
            if rule is not None:
                due.append((episode.finished_at or episode.last_at) + rule.retention)
        retention = [r.retention for r in self.rules.values()]
        if retention:
            due += [alert.at + min(retention) for alert in self.alerts]
        return min(due, default=None)

    def records(self) -> list[InterventionRecord]:
        """One record per intervention still kept, oldest first."""
        return [
            record
            for episode in self.episodes()
            for record in records_of(episode, self.rules[episode.rule_version])
        ]


class WindowRead(BaseModel):
    start: datetime
    end: datetime
    rows: int


class RunCounts(BaseModel):
    """What one call did."""

    ops: int = 0  # new ops folded in
    ops_seen_before: int = 0  # given again (pos at or below last_pos): ignored
    ops_untimed: int = 0  # no timestamp: outside every window
    corrections: int = 0  # correction ops judged as interventions
    corrections_unkeyed: int = 0  # without sig_hash and task_class, or untimed: not judged
    interventions: int = 0  # new interventions of every kind
    interventions_known: int = 0  # given again: ignored
    interventions_too_old: int = 0  # older than RETENTION_DAYS: not judged
    opened: int = 0
    joined: int = 0  # confounded: joined an episode before its first look
    refreshed: int = 0  # playbook entries re-posted while their endpoint's episode is open
    decided: int = 0
    regressed: int = 0
    alerts: int = 0
    finished: int = 0
    windows: list[WindowRead] = Field(default_factory=list)


class Assessment(BaseModel):
    """The result of one call: the next state, the changes it made (also in `state.pending`)."""

    state: OutcomeState
    changes: list[Change]
    counts: RunCounts

    def records(self) -> list[InterventionRecord]:
        return self.state.records()


def assess(
    state: OutcomeState,
    ops: pl.DataFrame,
    read_window: ReadWindow,
    interventions: Iterable[Intervention] = (),
    *,
    rule: OutcomeRule,
    now: datetime,
) -> Assessment:
    """Fold the new ops and interventions into the state; see the module docstring.

    The state given is updated and returned in the assessment (a state of a thousand episodes is
    too big to copy every five minutes). Every input is checked before anything in it changes;
    if the call raises all the same, drop the state and load the saved one again.

    `interventions`: the non-op ones (diagnoses, playbook entries) posted since the last call; one
    given again is recognised by its id. `now` closes windows and ends watches.
    """
    run = _Run(state, rule, now)
    run.fold(conform(ops, "new ops"), read_window, list(interventions))
    return Assessment(state=run.state, changes=run.changes, counts=run.counts)


class _Run:
    """One call's work on the state."""

    def __init__(self, state: OutcomeState, rule: OutcomeRule, now: datetime) -> None:
        state.rules.setdefault(rule.version, rule)
        self.state, self.rule, self.now = state, rule, now
        self.changes: list[Change] = []
        self.counts = RunCounts()
        self.rebuilt: set[str] = set()  # episodes that take catch-up ops (opened or joined now)
        self.fresh_first: int | None = None
        self.by_member: dict[str, Episode] = {
            m.id: e for e in [*state.open.values(), *state.done] for m in e.members
        }

    def fold(self, ops: pl.DataFrame, read_window: ReadWindow, given: list[Intervention]) -> None:
        state, counts = self.state, self.counts
        fresh = ops if state.last_pos is None else ops.filter(pl.col("pos") > state.last_pos)
        counts.ops_seen_before = ops.height - fresh.height
        counts.ops, counts.ops_untimed = fresh.height, fresh["ts"].null_count()
        self.fresh_first = int(fresh["pos"].min()) if fresh.height else None
        corrections, counts.corrections_unkeyed = corrections_in(fresh)
        new = self._new_interventions([*corrections, *given])
        counts.corrections = sum(1 for i in new if i.kind == "correction")

        group_endpoints = {
            k.endpoint
            for k in [*(i.key for i in new), *(e.key for e in state.open.values())]
            if k.field == "group" and k.endpoint is not None
        }
        fresh_attempts = with_patterns(attempts(fresh), group_endpoints)
        openings: dict[str, Opening] = {}
        catch_up = fresh_attempts.clear()
        if new:
            openings, catch_up = self._look_back(
                new, fresh, fresh_attempts, read_window, group_endpoints
            )

        specs = {e.spec: _spec(e.key, e.opening, e.last_at) for e in state.open.values()}
        new_specs: dict[str, Spec] = {}
        for intervention in new:
            spec = _spec(intervention.key, openings[intervention.id], intervention.at)
            earlier = specs.get(spec.id) or new_specs.get(spec.id)
            new_specs[spec.id] = (
                spec._replace(since=min(spec.since, earlier.since)) if earlier else spec
            )
            current = state.open.get(intervention.key.id)
            if current is not None:
                new_specs.setdefault(current.spec, specs[current.spec])
        specs |= new_specs
        rows = pl.concat(
            [
                contributions(fresh_attempts, specs.values(), late=False),
                contributions(catch_up, new_specs.values(), late=True),
            ]
        )
        self._replay(new, openings, compress(rows, self._starts(new, openings)))
        self._settle()
        self._prune()
        if fresh.height:
            last = int(fresh["pos"].max())
            state.last_pos = max(state.last_pos, last) if state.last_pos is not None else last
            newest = fresh["ts"].max()
            if isinstance(newest, datetime):
                state.clock = max(state.clock, newest) if state.clock is not None else newest

    # ── interventions ──

    def _new_interventions(self, candidates: list[Intervention]) -> list[Intervention]:
        horizon = self.now - self.rule.retention
        new: list[Intervention] = []
        for intervention in sorted(candidates, key=lambda i: (i.at, i.id)):
            if intervention.id in self.state.seen or intervention.id in self.by_member:
                self.counts.interventions_known += 1
            elif intervention.at < horizon:
                self.counts.interventions_too_old += 1
            elif all(intervention.id != i.id for i in new):
                new.append(intervention)
        self.counts.interventions = len(new)
        return new

    def _look_back(
        self,
        new: list[Intervention],
        fresh: pl.DataFrame,
        fresh_attempts: pl.DataFrame,
        read_window: ReadWindow,
        group_endpoints: set[str],
    ) -> tuple[dict[str, Opening], pl.DataFrame]:
        """One read of `[first new intervention − BASELINE_DAYS, newest time + 1 µs)`: the openings
        of the new interventions, and the ops of it folded in before (their post windows' start)."""
        first = new[0].at
        times = [self.now, fresh["ts"].max(), self.state.clock]
        start = first - self.rule.baseline
        end = max(t for t in times if isinstance(t, datetime)) + _MICROSECOND
        window = read_window(start, end)
        read = conform(window, "look-back window", columns=LOOKBACK_COLUMNS, ordered=False)
        del window  # a week of ops is big: keep one copy of what is used, at most two at once
        in_range = (pl.col("ts") >= start) & (pl.col("ts") < end)
        rows = read.select(in_range.sum()).item()
        self.counts.windows.append(WindowRead(start=start, end=end, rows=rows))
        # What was folded in before this call (the new ops all come after it, by `pos`).
        folded = in_range & (pl.col("pos") <= self._history_end(read))
        correction = pl.col("source") == CORRECTION_SOURCE
        corrections = pl.concat(
            [read.filter(folded & correction), fresh.filter(correction).select(LOOKBACK_COLUMNS)]
        )
        earlier = read.filter(folded & is_attempt())
        del read
        touched = touched_keys(corrections)
        touched |= {e.key.id for e in self.state.episodes()} | {i.key.id for i in new}
        earlier = with_patterns(earlier, group_endpoints)
        before = pl.concat([earlier, fresh_attempts.select(earlier.columns)])
        openings = {i.id: open_episode(self.rule, i, before, touched) for i in new}
        return openings, earlier.filter(pl.col("ts") >= first)

    def _history_end(self, read: pl.DataFrame) -> int:
        """The last `pos` folded in before this call. On the first call, the ops before the first
        new one (or everything read, when no op is new: the state then starts after it)."""
        state = self.state
        if state.last_pos is not None:
            return state.last_pos
        if self.fresh_first is not None:
            return self.fresh_first - 1
        state.last_pos = int(read["pos"].max()) if read.height else None
        return state.last_pos if state.last_pos is not None else -1

    def _intervene(self, intervention: Intervention, opening: Opening) -> None:
        state = self.state
        state.seen[intervention.id] = intervention.at
        current = state.open.get(intervention.key.id)
        if current is not None and intervention.kind == current.members[0].kind == "playbook":
            # consolidate-playbooks re-posts an endpoint's entry with each new success: while
            # the endpoint's playbook episode is open, a new entry refreshes it, nothing more.
            self.counts.refreshed += 1
            return
        cluster_for(state.clusters, intervention, self.rule.advice_similarity)
        if current is not None:
            rule = state.rules[current.rule_version]
            if (
                current.decision is None
                and not current.looks
                and intervention.at < current.window_end
            ):
                current.join(rule, intervention)
                self.by_member[intervention.id] = current
                self.rebuilt.add(current.id)
                self.counts.joined += 1
                return
            if current.decision is None:
                if current.close(rule, intervention.at, f"next intervention {intervention.id}"):
                    self._changed(current, "decided")
            else:
                current.end_watch(intervention.at)
            self._finish(current)
        episode = Episode.start(self.rule, intervention, opening)
        state.open[intervention.key.id] = episode
        self.by_member[intervention.id] = episode
        self.rebuilt.add(episode.id)
        self.counts.opened += 1

    # ── ops ──

    def _starts(self, new: list[Intervention], openings: dict[str, Opening]) -> pl.DataFrame:
        """Where each episode stands before this call's attempts, for those whose course no new
        intervention changes in this call (see `frames.compress`)."""
        arriving = collections.Counter(i.key.id for i in new)
        episodes = [e for e in self.state.open.values() if not arriving[e.key.id]]
        episodes += [
            Episode.start(self.rule, i, openings[i.id])
            for i in new
            if arriving[i.key.id] == 1 and i.key.id not in self.state.open
        ]
        rows = []
        for episode in episodes:
            if episode.opening.unit == "hours":
                continue
            rule, recovery = self.state.rules[episode.rule_version], episode.recovery
            undecided = episode.decision is None
            rows.append(
                {
                    "spec": episode.spec,
                    "x0": episode.after.exposure,
                    "s0": episode.since_failure,
                    "needed": recovery.needed if recovery.at is None else None,
                    "post_start": episode.post_start,
                    "window_end": episode.window_end,
                    "until": episode.watch.until if episode.watch is not None else None,
                    "thresholds": rule.look_exposures[len(episode.looks) :] if undecided else [],
                }
            )
        return pl.DataFrame(rows, schema=START_SCHEMA)

    def _replay(
        self, new: list[Intervention], openings: dict[str, Opening], rows: list[Contribution]
    ) -> None:
        """Interventions and attempts in time order (an intervention before ops of its instant)."""
        # (time, 0 for an intervention / 1 for an op, pos, index)
        events = [(i.at, 0, n, n) for n, i in enumerate(new)]
        events += [(row[0], 1, row[1], n) for n, row in enumerate(rows)]
        events.sort()
        for _, kind, _, index in events:
            if kind == 0:
                intervention = new[index]
                self._intervene(intervention, openings[intervention.id])
                continue
            ts, _, key_id, spec, exposure, failed, late = rows[index]
            episode = self.state.open.get(key_id)
            if episode is None or episode.spec != spec or (late and episode.id not in self.rebuilt):
                continue
            change = episode.observe(self.state.rules[episode.rule_version], ts, exposure, failed)
            if change is not None:
                self._changed(episode, change)

    # ── time ──

    def _settle(self) -> None:
        """Time passing: hours looks, windows that ended, watches that ran out."""
        for episode in list(self.state.open.values()):
            rule = self.state.rules[episode.rule_version]
            horizon = self.now - rule.lag
            if episode.advance(rule, horizon) is not None:
                self._changed(episode, "decided")
            if episode.decision is None and horizon >= episode.window_end:
                episode.close(rule, episode.window_end, f"{rule.window_hours:g} h passed")
                self._changed(episode, "decided")
            if episode.key.id in self.state.open and episode.decision == "worked":
                watch = episode.watch
                if watch is None or self.now >= watch.until:
                    episode.end_watch(watch.until if watch is not None else self.now)
                    self._finish(episode)

    def _changed(self, episode: Episode, change: Literal["decided", "regressed"]) -> None:
        rule = self.state.rules[episode.rule_version]
        made = verdict_change(episode, rule)
        self.changes.append(made)
        self.state.pending.append(made)
        if change == "regressed":
            self.counts.regressed += 1
        else:
            self.counts.decided += 1
        if change == "regressed" or episode.decision != "worked":
            episode.end_watch(made.at)
            self._finish(episode)
        self._check_alerts(episode, made.at)

    def _check_alerts(self, episode: Episode, at: datetime) -> None:
        ids = {m.id for m in episode.members}
        for cluster in self.state.clusters.values():
            if ids.isdisjoint(cluster.members):
                continue
            alert = check_cluster(self.rule, cluster, self.by_member, at)
            if alert is not None:
                self.state.alerts.append(alert)
                change = alert_change(alert)
                self.changes.append(change)
                self.state.pending.append(change)
                self.counts.alerts += 1

    def _finish(self, episode: Episode) -> None:
        if self.state.open.get(episode.key.id) is episode:
            del self.state.open[episode.key.id]
            self.state.done.append(episode)
            self.counts.finished += 1

    def _prune(self) -> None:
        """Forget what is older than RETENTION_DAYS (finished episodes, ids, clusters, alerts)."""
        state, horizon = self.state, self.now - self.rule.retention
        state.done = [e for e in state.done if (e.finished_at or e.last_at) >= horizon]
        state.seen = {i: at for i, at in state.seen.items() if at >= horizon}
        kept = {m.id for e in state.episodes() for m in e.members}
        for cluster_id, cluster in list(state.clusters.items()):
            cluster.members = [m for m in cluster.members if m in kept]
            if not cluster.members:
                del state.clusters[cluster_id]
        state.alerts = [a for a in state.alerts if a.at >= horizon]
        used = {e.rule_version for e in state.episodes()} | {self.rule.version}
        state.rules = {v: r for v, r in state.rules.items() if v in used}


def _spec(key: Key, opening: Opening, since: datetime) -> Spec:
    return Spec(
        key_id=key.id,
        id=spec_id(key, opening.unit, opening.endpoint),
        field=key.field,
        value=key.value,
        pattern=key.pattern,
        unit=opening.unit,
        endpoint=opening.endpoint,
        since=since,
    )
