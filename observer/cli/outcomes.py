"""`observer outcomes`: every intervention with its verdict, and the alerts, as the last
assess-outcomes run left them (`state/outcomes.json`). One file read, no prefect, no polars.

`--json` prints one object, `{"interventions": [...], "alerts": [...]}`: each intervention with
its `kind`, `key` (`sig_hash`, `task_class`, `endpoint`, `pattern` as known), `at`, `advice`,
`verdict`, `before` and `after` (`{attempts, failures}`, or `{hours, failures}` when its exposure
is time), the rate ratio and its interval, the null it had to beat and the rule's version; each
alert with its `kind` (`repeated-advice`), `advice`, `key`, the `interventions` it covers and the
pooled numbers.
"""

from __future__ import annotations

import json

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from observer.outcomes.view import OutcomesView, key_text, ratio_text
from observer.settings import Settings

ADVICE_CHARS = 60
VERDICT_STYLES = {
    "worked": "green",
    "did-not-work": "red",
    "worse": "red",
    "regressed": "red",
    "too-early": "dim",
}


class OutcomesShown:
    """The view as the terminal shows it: a table of interventions, then the alerts."""

    def __init__(self, view: OutcomesView) -> None:
        self.view = view

    def __rich__(self) -> RenderableType:
        view = self.view
        if view.updated_at is None:
            return Text("no assess-outcomes run yet: no intervention judged")
        title = (
            f"{len(view.interventions)} intervention(s) as of {view.updated_at:%Y-%m-%d %H:%M:%S}"
            f" UTC (rule {view.rule_version})"
        )
        table = Table(
            "at (UTC)", "kind", "key", "verdict", "before", "after", "ratio", "advice", title=title
        )
        for record in view.interventions:
            verdict = record.verdict if record.joint is None else f"confounded ({record.outcome})"
            table.add_row(
                f"{record.at:%m-%d %H:%M}",
                record.kind,
                Text(key_text(record.key)),
                Text(verdict, style=VERDICT_STYLES.get(record.outcome, "")),
                record.before.fraction(),
                record.after.fraction(),
                ratio_text(record.rate_ratio),
                Text(_cut(record.advice)),
            )
        parts: list[RenderableType] = [table]
        for alert in view.alerts:
            parts.append(Text(f"alert {alert.at:%m-%d %H:%M}: {alert.message}", style="bold red"))
        return Group(*parts)


def show_outcomes(settings: Settings, *, as_json: bool) -> int:
    view = OutcomesView.load(settings.layout.outcomes_view)
    if as_json:
        print(json.dumps(view.document(), ensure_ascii=False, indent=2))
    else:
        Console().print(OutcomesShown(view))
    return 0


def _cut(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ADVICE_CHARS else line[: ADVICE_CHARS - 1] + "…"
