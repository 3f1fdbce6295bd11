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
    """The view as the terminal shows it: every intervention, then the alerts."""

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
        # One entry per intervention: its failures before → after on the first line, its rate
        # ratio, key and advice indented below: readable at any width (a table's columns fold at 80).
        lines = Text()
        for record in view.interventions:
            verdict = record.verdict if record.joint is None else f"confounded ({record.outcome})"
            lines.append(f"{record.at:%m-%d %H:%M}  {record.kind:<10}  ")
            lines.append(f"{verdict:<12}", style=VERDICT_STYLES.get(record.outcome, ""))
            lines.append(f"  {record.before.fraction()} → {record.after.fraction()}\n")
            lines.append(f"    ratio {ratio_text(record.rate_ratio)}  ")
            lines.append(f"{key_text(record.key)}\n", style="cyan")
            lines.append(f"    {_cut(record.advice)}\n", style="dim")
        parts: list[RenderableType] = [Text(title, style="bold"), lines]
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
