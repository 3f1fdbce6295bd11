"""The /stats window against the plainest model of it: the last N ops in a list, counted anew."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from observer.webhook.events import FastEvent
from observer.webhook.window import COUNT_EVERY, StatsWindow

SIZE = 7  # small, so that eviction splits runs and batches often

op_fields = st.fixed_dictionaries(
    {
        "source": st.sampled_from(["scenario", "mcp", "tail"]),
        "success": st.booleans(),
        "timestamp": st.sampled_from(["t1", "t2"]),
        "role": st.sampled_from(["welder", "rigger"]),
    }
)
# A batch: ops the webhook decoded (attributes) or read back from a line (a dict, whose source may
# be missing or a number).
batches = st.lists(
    st.lists(st.tuples(op_fields, st.booleans()), min_size=1, max_size=12), max_size=12
)


def model_stats(ops: list[dict[str, Any]]) -> dict[str, Any]:
    last = ops[-SIZE:]
    by_source: dict[str, int] = {}
    for op in last:
        by_source[op["source"]] = by_source.get(op["source"], 0) + 1
    successes = sum(op["success"] for op in last)
    scenario = [op for op in last if op["source"] == "scenario"][-10:]
    return {
        "total": len(last),
        "successes": successes,
        "failures": len(last) - successes,
        "by_source": by_source,
        "recent_scenario_ops": [
            {"ts": op["timestamp"], "ok": op["success"], "role": op["role"]} for op in scenario
        ],
    }


@given(batches)
def test_the_window_counts_the_last_ops_whatever_the_batches(
    batches: list[list[tuple[dict[str, Any], bool]]],
) -> None:
    window = StatsWindow(SIZE)
    seen: list[dict[str, Any]] = []
    for batch in batches:
        ops = [FastEvent(**fields) if decoded else dict(fields) for fields, decoded in batch]
        window.add_ops(ops)
        seen.extend(fields for fields, _ in batch)
        assert len(window) == min(len(seen), SIZE)  # ops added are counted before the stats ask
        if len(seen) % 3:  # the stats of some batches only: the others stay queued, then counted
            assert window.stats() == model_stats(seen)
    assert window.stats() == model_stats(seen)


def test_a_line_without_a_source_counts_as_mcp_and_a_number_as_its_text() -> None:
    window = StatsWindow(SIZE)
    window.add_line(b'{"success":true}')
    window.add_line(b'{"source":5,"success":false}')
    window.add_line(b'{"source":"5","success":"true"}')
    window.add_line(b"not json")
    assert window.stats()["by_source"] == {"mcp": 1, "5": 2}
    assert window.stats()["successes"] == 1


def test_ops_added_one_at_a_time_are_counted_in_bulk_and_never_queue_without_bound() -> None:
    window = StatsWindow(SIZE)
    seen: list[dict[str, Any]] = []
    for index in range(3 * COUNT_EVERY + 5):
        fields = {
            "source": ("scenario", "mcp", "tail")[index % 3],
            "success": index % 5 != 0,
            "timestamp": f"t{index}",
            "role": "welder",
        }
        window.add_ops([FastEvent(**fields)])
        seen.append(fields)
        assert len(window) == min(len(seen), SIZE)
        assert len(window._queued) < COUNT_EVERY
    assert window.stats() == model_stats(seen)
