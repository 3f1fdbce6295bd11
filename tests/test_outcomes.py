"""The outcomes engine on synthetic streams with a known truth (a fixed seed each), fed as the
flow will feed it: in arrival batches, with a look-back reader over what has arrived.

The endpoint sees 120 attempts an hour. The corrected signature `sigA` sits at 2% and spikes to
30% eight hours before the correction at T0; four other signatures (R1–R4) spike now and then and
fall back by themselves, unless the test says otherwise. Signatures are set on failures only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
import pytest

from observer.errors import OutcomeInputError, SettingsError
from observer.outcomes import (
    ALERT_HINT,
    Intervention,
    OutcomeRule,
    OutcomeState,
    assess,
    engine,
)
from observer.outcomes.frames import empty_ops
from observer.pipelines.grouping import normalise_error
from observer.settings import load_settings
from tests.streams import (
    ENDPOINT,
    HOUR,
    T0,
    Outcome,
    Stream,
    piecewise,
    reference_spikes,
    run,
)

WEEK = T0 - 7 * 24 * HOUR
END = T0 + 80 * HOUR
SECOND = timedelta(seconds=1)
OTHERS = ["R1", "R2", "R3", "R4"]
#: Uncorrected spikes that run on for a day: a spike here does not fall by itself within hours.
LASTING = reference_spikes(OTHERS, WEEK, END, 0.01, 0.25, hours=24)
#: Uncorrected spikes of six hours that stop where a pre-window ends: spikes here fall at once.
BRIEF = reference_spikes(OTHERS, WEEK, END, 0.01, 0.25, hours=6)
BASE = (WEEK, END, 0.02)
SPIKE = (T0 - 8 * HOUR, T0 + 12 * HOUR, 0.3)
FIXED = (T0, END, 0.002)
ADVICE = "retry the fill with the staffer's id"


def stream(
    seed: int,
    key: list[tuple[Any, Any, float]],
    *,
    corrections: tuple[tuple[str, Any, str], ...] = (("sigA", T0, ADVICE),),
    others: dict[str, list[tuple[Any, Any, float]]] = LASTING,
    paces: list[tuple[Any, Any, float]] | None = None,
    **traffic: Any,
) -> pl.DataFrame:
    built = Stream(seed)
    schedule = {"sigA": key, **others}
    piecewise(built, WEEK, END, 120, schedule, paces=paces or [], **traffic)
    for sig_hash, at, text in corrections:
        built.correction(at, sig_hash, text)
    return built.frame()


def judged(frame: pl.DataFrame, **options: Any) -> Outcome:
    options.setdefault("start", T0 - HOUR)
    options.setdefault("until", END)
    return run(frame, **options)


def only(outcome: Outcome) -> Any:
    (record,) = outcome.state.records()
    return record


# ── the verdicts ────────────────────────────────────────────────────────────────────────────────


def test_a_correction_that_works() -> None:
    outcome = judged(stream(1, [BASE, SPIKE, FIXED]))
    record = only(outcome)

    assert record.verdict == "worked"
    assert record.kind == "correction"
    assert record.key == {"sig_hash": "sigA", "endpoint": ENDPOINT}
    assert record.exposure == "endpoint-attempts"  # sigA is set on failures only
    assert record.after.attempts <= 40 and record.after.failures == 0
    # Six hours at 120 an hour, less the attempts that failed with another signature first.
    assert record.before.failures > 150 and 650 < record.before.attempts < 720
    assert record.rate_ratio == 0.0
    assert record.interval[0] == 0.0 and record.interval[1] < record.null_ratio
    assert record.reference_spikes >= 10
    assert not record.recovery.censored and record.recovery.hours < 1
    assert record.rule_version == OutcomeRule().version
    (change,) = outcome.changes
    assert (change.id, change.kind, change.verdict) == (f"{record.id}:worked", "verdict", "worked")
    entry = change.log_entry()
    assert entry.operation == "outcome: correction worked"
    assert entry.approach == ADVICE
    assert entry.result.startswith("worked: failures ")
    assert f"rule={record.rule_version}" in entry.context


def test_a_correction_that_does_not_work() -> None:
    outcome = judged(stream(2, [BASE, SPIKE]))
    record = only(outcome)

    assert record.verdict == "did-not-work"
    assert record.after.failures / record.after.attempts > 0.1
    assert [c.verdict for c in outcome.changes] == ["did-not-work"]


def test_a_correction_too_recent_to_judge_posts_nothing() -> None:
    at = END - 2 * 60 * SECOND
    outcome = judged(stream(3, [BASE, SPIKE], corrections=(("sigA", at, ADVICE),)))
    record = only(outcome)

    assert record.verdict == "too-early"
    assert record.looks == 0 and record.decided_at is None
    assert outcome.changes == []
    assert outcome.state.pending == []


def test_a_spike_that_falls_by_itself_like_the_uncorrected_ones() -> None:
    # sigA's spike ends at the correction; R1–R4's spikes end at the same point of a pre-window
    # and fall back with nobody correcting them: the fall is not the correction's.
    key = [BASE, (T0 - 6 * HOUR, T0, 0.3)]
    record = only(judged(stream(4, key, others=BRIEF)))

    assert record.verdict == "not-attributable"
    assert record.rate_ratio < 0.2  # the failures did fall, a lot
    assert record.null_ratio < 0.15  # … but uncorrected spikes fall as far


def test_the_same_fall_is_credited_where_uncorrected_spikes_run_on() -> None:
    key = [BASE, (T0 - 6 * HOUR, T0, 0.3)]
    record = only(judged(stream(4, key, others=LASTING)))

    assert record.verdict == "worked"


def test_a_correction_followed_by_worse() -> None:
    outcome = judged(stream(5, [(WEEK, END, 0.05), (T0, END, 0.4)]))
    record = only(outcome)

    assert record.verdict == "worse"
    assert record.rate_ratio > 3
    assert outcome.changes[0].log_entry().operation == "outcome: correction worse"


def test_two_overlapping_corrections_get_one_joint_verdict() -> None:
    corrections = (("sigA", T0, "retry"), ("sigA", T0 + 120 * SECOND, "use the other shard"))
    outcome = judged(stream(6, [BASE, SPIKE, FIXED], corrections=corrections))
    first, second = outcome.state.records()

    assert first.verdict == second.verdict == "confounded"
    assert first.joint == second.joint
    assert first.joint.verdict == "worked"
    assert first.joint.members == [first.id, second.id]
    assert first.after == second.after  # one post window, after the second
    (change,) = outcome.changes  # one post for the set, no split credit
    assert change.verdict == "worked"
    assert [r.id for r in change.interventions] == [first.id, second.id]
    assert "jointly, 2 interventions" in change.summary


def useless_advice(*texts: str) -> pl.DataFrame:
    """sigA at 30% from eight hours before T0 to the end, corrected once a day with `texts`."""
    corrections = tuple(("sigA", T0 + n * 24 * HOUR, text) for n, text in enumerate(texts))
    return stream(7, [BASE, (T0 - 8 * HOUR, END, 0.3)], corrections=corrections)


SAME_ADVICE = (
    "Retry the fill 3 times before escalating",
    "retry the fill 5 times before escalating",
    "Retry the fill 2 times before escalating!",
)


def test_the_same_advice_three_times_without_effect_alerts_once() -> None:
    frame = useless_advice(*SAME_ADVICE)
    outcome = judged(frame)

    assert [r.verdict for r in outcome.state.records()] == ["did-not-work"] * 3
    alerts = [c for c in outcome.changes if c.kind == "alert"]
    assert len(alerts) == 1
    alert = alerts[0].alert
    assert alert is not None
    assert alert.kind == "repeated-advice"
    assert alert.advice == "Retry the fill 3 times before escalating"
    assert [i.id for i in alert.interventions] == [r.id for r in outcome.state.records()]
    assert alert.pooled.not_worked == 3 and alert.pooled.p_not_the_fix < 0.001
    assert ALERT_HINT in alert.message
    assert ALERT_HINT == "look for a data gap or a broken dependency, not a drift"
    entry = alerts[0].log_entry()
    assert entry.operation == "outcome: repeated advice without effect (3)"
    assert ALERT_HINT in entry.result

    # Told again (a rerun over the same ops), it does not alert a second time.
    assert judged(frame, state=outcome.state).changes == []


def test_different_advice_does_not_cluster() -> None:
    texts = "ask the staffing desk for the shard map", "use the backup roster if it is empty"
    outcome = judged(useless_advice(SAME_ADVICE[0], *texts))

    assert [r.verdict for r in outcome.state.records()] == ["did-not-work"] * 3
    assert [c for c in outcome.changes if c.kind == "alert"] == []
    assert len(outcome.state.clusters) == 3


def test_failures_returning_after_a_success_regress() -> None:
    key = [BASE, SPIKE, FIXED, (T0 + 10 * HOUR, END, 0.3)]
    outcome = judged(stream(8, key))
    record = only(outcome)

    assert record.verdict == "regressed"
    assert record.regressed_at is not None
    assert T0 + 10 * HOUR < record.regressed_at < T0 + 11 * HOUR
    assert [(c.kind, c.verdict) for c in outcome.changes] == [
        ("verdict", "worked"),
        ("regressed", "regressed"),
    ]


def test_no_regression_while_the_fix_holds() -> None:
    outcome = judged(stream(1, [BASE, SPIKE, FIXED]), until=T0 + 8 * 24 * HOUR)

    assert only(outcome).verdict == "worked"
    assert [c.kind for c in outcome.changes] == ["verdict"]
    assert outcome.state.open == {}  # the watch ran out: nothing left open


def test_a_signature_seen_on_successes_is_judged_per_its_own_attempts() -> None:
    record = only(judged(stream(9, [BASE, SPIKE, FIXED], signature_on_success="sigA")))

    assert record.exposure == "attempts"
    assert record.verdict == "worked"


def test_a_traffic_drop_after_a_correction_does_not_look_like_a_fix() -> None:
    # After the correction the endpoint sees 4 attempts an hour instead of 120; sigA still fails
    # 30% of them. Per hour, failures fell 30-fold; per attempt, nothing changed.
    outcome = judged(stream(10, [BASE, SPIKE], paces=[(T0, END, 4)]))
    record = only(outcome)

    assert record.verdict == "did-not-work"
    assert record.after.attempts <= 40  # ten hours of the slow traffic
    assert record.after.failures / record.after.attempts > 0.15


def test_a_correction_on_a_key_never_seen_is_judged_per_hour_and_flagged() -> None:
    corrections = (("sigZ", T0, ADVICE),)
    record = only(judged(stream(12, [BASE, SPIKE, FIXED], corrections=corrections)))

    assert record.exposure == "hours"
    assert record.flagged is not None and "traffic" in record.flagged
    assert record.before.hours == 6 and record.before.attempts is None
    assert record.verdict == "inconclusive"  # no failure of sigZ before or after


def test_failures_in_flight_just_after_the_correction_are_not_counted() -> None:
    # The first minute after the correction: 60 attempts, every one failing with sigA (requests
    # sent before the correction landed). Counted, they would make it look worse.
    key = [BASE, SPIKE, FIXED, (T0, T0 + 60 * SECOND, 1.0)]
    record = only(judged(stream(11, key, paces=[(T0, T0 + 60 * SECOND, 3600)])))

    assert record.verdict == "worked"
    assert record.in_flight >= 55
    assert record.after.failures == 0


def test_a_diagnosis_is_judged_on_its_failure_group() -> None:
    error = "staffer st-4411 not found in shard 7"
    pattern = normalise_error(error)
    frame = stream(13, [BASE, SPIKE, FIXED], corrections=(), errors={"sigA": error})
    diagnosis = Intervention.diagnosis(T0, ENDPOINT, pattern, "The shard map is stale: reload it")
    record = only(judged(frame, interventions=[diagnosis]))

    assert record.kind == "diagnosis"
    assert record.key == {
        "endpoint": ENDPOINT,
        "pattern": "staffer st-<num> not found in shard <num>",
    }
    assert record.exposure == "endpoint-attempts"
    assert record.verdict == "worked"
    assert record.reference_spikes >= 10  # the other failure groups of the endpoint


def test_a_playbook_entry_is_judged_on_its_endpoint() -> None:
    built = Stream(14)
    piecewise(
        built, WEEK, END, 60, {"x": [(WEEK, END, 0.3), (T0, END, 0.03)]}, endpoint="scenario:rescue"
    )
    entry = Intervention.playbook(T0, "scenario:rescue", "common pattern: call the backup first")
    record = only(judged(built.frame(), interventions=[entry]))

    assert record.kind == "playbook"
    assert record.key == {"endpoint": "scenario:rescue"}
    assert record.exposure == "attempts"
    assert record.reference_spikes == 0  # playbooks are not triggered by failures
    assert record.verdict == "worked"


def test_a_playbook_entry_posted_again_refreshes_its_open_episode() -> None:
    built = Stream(14)
    piecewise(built, WEEK, END, 60, {"x": [(WEEK, END, 0.3)]}, endpoint="scenario:rescue")
    entries = [
        Intervention.playbook(T0 + n * 3 * 60 * SECOND, "scenario:rescue", f"pattern {n}")
        for n in range(5)
    ]
    outcome = judged(built.frame(), interventions=entries, until=T0 + 2 * HOUR)

    (record,) = outcome.state.records()
    assert record.id == entries[0].id and record.verdict != "confounded"
    assert sum(a.counts.refreshed for a in outcome.assessments) == 4


# ── incremental, exactly once ───────────────────────────────────────────────────────────────────


def test_a_rerun_posts_nothing() -> None:
    frame = stream(1, [BASE, SPIKE, FIXED])
    first = judged(frame)
    assert len(first.changes) == 1

    def read(low: Any, high: Any) -> pl.DataFrame:
        return frame.filter((pl.col("ts") >= low) & (pl.col("ts") < high))

    diagnosis = Intervention.diagnosis(T0, ENDPOINT, "p", "x")
    saved = first.state.model_dump_json()
    rerun = assess(OutcomeState.from_json(saved), frame, read, [], rule=OutcomeRule(), now=END)
    assert rerun.changes == []
    assert rerun.counts.ops == 0 and rerun.counts.ops_seen_before == frame.height
    assert rerun.state.model_dump_json() == saved
    # The pending change stays pending until the poster acknowledges it, then is gone for good.
    assert [c.id for c in rerun.state.pending] == [c.id for c in first.changes]
    rerun.state.acknowledge(first.changes[0].id)
    assert rerun.state.pending == []
    # A non-op intervention given twice is taken once.
    once = assess(rerun.state, empty_ops(), read, [diagnosis], rule=OutcomeRule(), now=END)
    twice = assess(once.state, empty_ops(), read, [diagnosis], rule=OutcomeRule(), now=END)
    assert once.counts.interventions == 1 and twice.counts.interventions_known == 1


def test_verdicts_do_not_depend_on_how_often_it_runs_or_restarts() -> None:
    frame = stream(8, [BASE, SPIKE, FIXED, (T0 + 10 * HOUR, END, 0.3)])
    often = judged(frame, every=timedelta(minutes=5), until=T0 + 12 * HOUR, through_json=True)
    seldom = judged(frame, every=timedelta(hours=6), until=T0 + 12 * HOUR)

    assert often.verdicts() == seldom.verdicts() == {"correction:20160": "regressed"}
    assert [(c.id, c.at) for c in often.changes] == [(c.id, c.at) for c in seldom.changes]
    looks = [e.looks for e in often.state.episodes()]
    assert looks == [e.looks for e in seldom.state.episodes()]


def test_folding_runs_of_successes_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = stream(8, [BASE, SPIKE, FIXED, (T0 + 10 * HOUR, END, 0.3)])
    folded = judged(frame, every=timedelta(hours=2))

    unfolded = engine.compress
    monkeypatch.setattr(engine, "compress", lambda rows, starts: unfolded(rows, starts.clear()))
    one_by_one = judged(frame, every=timedelta(hours=2))

    # The same, but for the last bits of the CUSUM's score (a run is added in one step).
    assert _rounded(folded.state.model_dump()) == _rounded(one_by_one.state.model_dump())
    assert _rounded([c.model_dump() for c in folded.changes]) == _rounded(
        [c.model_dump() for c in one_by_one.changes]
    )


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def test_the_look_back_is_read_only_when_an_intervention_arrives() -> None:
    outcome = judged(stream(2, [BASE, SPIKE]), every=timedelta(hours=1))
    reads = [w for a in outcome.assessments for w in a.counts.windows]

    (read,) = reads
    assert read.start == T0 - OutcomeRule().baseline
    assert read.end - T0 < timedelta(hours=1, seconds=1)


def test_the_state_keeps_only_what_it_must() -> None:
    outcome = judged(stream(2, [BASE, SPIKE]), until=T0 + 20 * 24 * HOUR, every=timedelta(days=1))

    assert outcome.state.done == [] and outcome.state.open == {}
    assert outcome.state.seen == {} and outcome.state.clusters == {}
    assert list(outcome.state.rules) == [OutcomeRule().version]


# ── bad input ───────────────────────────────────────────────────────────────────────────────────


def test_ops_without_a_column_are_refused_naming_it() -> None:
    frame = stream(2, [BASE]).drop("sig_hash")
    with pytest.raises(OutcomeInputError, match=r"missing column.*sig_hash"):
        assess(OutcomeState(), frame, lambda a, b: frame, rule=OutcomeRule(), now=END)
    wrong = stream(2, [BASE]).with_columns(pl.lit("yes").alias("success"))
    with pytest.raises(OutcomeInputError, match="wrong type"):
        assess(OutcomeState(), wrong, lambda a, b: wrong, rule=OutcomeRule(), now=END)


def test_a_state_that_is_not_one_is_refused() -> None:
    with pytest.raises(OutcomeInputError, match="not an outcomes state"):
        OutcomeState.from_json(b"[1, 2]")
    with pytest.raises(OutcomeInputError, match="format 9"):
        OutcomeState.from_json(b'{"format": 9}')


def test_corrections_without_a_key_are_counted_not_judged() -> None:
    frame = stream(2, [BASE], corrections=((None, T0, "be careful"),))  # type: ignore[arg-type]
    outcome = judged(frame)

    assert outcome.state.records() == []
    assert sum(a.counts.corrections_unkeyed for a in outcome.assessments) == 1


def test_untrusted_advice_is_cut_and_kept_as_text() -> None:
    text = "<script>" + "x" * 5000
    frame = stream(2, [BASE, SPIKE], corrections=(("sigA", T0, text),))
    record = only(judged(frame))
    assert record.advice == text[:1000]
    assert len(judged(frame).changes[0].log_entry().approach) <= 500


def test_the_rule_comes_from_the_settings_and_versions_every_record() -> None:
    settings = load_settings(OBSERVER_OUTCOMES_ALPHA="0.01", OBSERVER_OUTCOMES_LOOKS="3")
    rule = OutcomeRule.from_settings(settings)
    assert (rule.alpha, rule.looks) == (0.01, 3)
    assert rule.look_exposures == [10, 20, 40]
    assert rule.version != OutcomeRule().version
    assert OutcomeRule.from_settings(load_settings()).version == OutcomeRule().version
    with pytest.raises(SettingsError, match="OBSERVER_OUTCOMES_SHRINK_WEIGHT"):
        OutcomeRule.from_settings(load_settings(OBSERVER_OUTCOMES_SHRINK_WEIGHT_MIN="0.9"))
    with pytest.raises(SettingsError, match="OBSERVER_OUTCOMES_ALPHA"):
        load_settings(OBSERVER_OUTCOMES_ALPHA="0.7")

    frame = stream(2, [BASE, SPIKE])
    record = only(judged(frame, rule=rule))
    assert record.rule_version == rule.version
