"""What an analyze-errors run shows on its Prefect run page: a markdown report and a groups table."""

from __future__ import annotations

from typing import Any

from observer.analysis import DEGRADED_APPROACH, Report, Selection
from observer.grouping import Group, clean_cut


def group_rows(selection: Selection, report: Report) -> list[dict[str, Any]]:
    """One row per group carried by the run (biggest first), then one row totalling the rest."""
    rows: list[dict[str, Any]] = []
    for status, groups in (("new", selection.fresh), ("known", selection.known)):
        for group in groups:
            if status == "known":
                handling = "known: analysed before, not re-sent"
            elif group.signature in report.shown:
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


def render_markdown(selection: Selection, report: Report, delivery: str) -> str:
    """The run's report: what was read, what the LLM said (or why not), and what was posted."""
    lines = [
        "# Error analysis",
        "",
        f"- **Outcome:** {report.message}",
        f"- **Delivery:** {delivery}",
        f"- **Read:** {selection.note}; bytes {selection.start}–{selection.end}"
        + (f", {selection.lines} line(s)" if selection.lines >= 0 else ""),
        f"- **Failures:** {selection.failures}: {selection.fresh_failures} in "
        f"{selection.fresh_groups} new group(s), {selection.known_failures} in known ones",
    ]
    if selection.unreadable:
        lines.append(f"- **Unreadable lines skipped:** {selection.unreadable}")
    if report.kind == "degraded":
        lines += [
            "",
            f"> **Degraded report — not made by the LLM** (`{DEGRADED_APPROACH}`).",
            f"> LLM error: {report.llm_error}",
        ]
    if report.text:
        title = "Diagnosis" if report.kind != "degraded" else "Degraded report (counts only)"
        lines += ["", f"## {title}", "", report.text]
    if report.entry is not None:
        lines += [
            "",
            "## `/log` entry",
            "",
            "```json",
            report.entry.model_dump_json(indent=2),
            "```",
        ]
    groups = selection.fresh + selection.known
    if groups:
        lines += [
            "",
            "## Groups",
            "",
            "| endpoint | pattern | count | last seen |",
            "|---|---|---|---|",
        ]
        lines += [_table_line(group) for group in groups[:50]]
        if len(groups) > 50:
            lines.append(f"| … | {len(groups) - 50} more in the table artifact | | |")
    return "\n".join(lines) + "\n"


def _table_line(group: Group) -> str:
    pattern = clean_cut(group.pattern, 120).replace("|", "\\|")
    endpoint = group.endpoint.replace("|", "\\|")
    return f"| {endpoint} | `{pattern}` | {group.count} | {group.last_seen} |"
