"""The picture of a decided intervention: its key's failure rate before and after it, against the
rate it had to beat.

Hours on the x axis, counted from the (last) intervention. The "before" is the pre-window's rate
(the episode that prompted it), drawn flat over those hours; the rate after is the post window's,
at each look the judging took (cumulative from the window's start, as each look judged it); the
dashed grey line is what the rate would have fallen to by itself (the "before" times the null
ratio of each look: the shrinkage toward the key's baseline and the decay of uncorrected spikes),
the grey line the key's own longer baseline. A line marks each intervention, the shaded stretch
is the window the verdict rests on; a regression adds the rate the watch saw when it rang.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from observer.charts import LineChart, Marker, Series, Span
from observer.outcomes.episodes import HOUR, Episode
from observer.outcomes.rule import OutcomeRule
from observer.outcomes.view import key_text
from observer.pipelines.grouping import clean_cut

TITLE_KEY_CHARS = 60

Point = tuple[float, float]


class BeforeAfter(BaseModel):
    """What the chart of one decided episode draws (its numbers, in hours from its last
    intervention)."""

    key: str
    kind: str
    verdict: str
    per_hour: bool  # the exposure is hours: rates are failures per hour
    before: float | None  # the pre-window's rate
    baseline: float | None  # the key's longer baseline rate
    pre_hours: float
    members: list[float]  # each intervention (the last at 0)
    after_from: float  # the post window's start (after the ops in flight)
    after_to: float  # the deciding look, else the window's end or now
    rate: list[Point]  # at each look: the rate after so far; then the window's, as it stands
    expected: list[Point]  # at each look: the rate it had to beat
    regressed: Point | None = None  # when the watch rang: the rate it saw since `worked`

    @classmethod
    def of(
        cls, episode: Episode, key: dict[str, str], rule: OutcomeRule, now: datetime
    ) -> BeforeAfter:
        last = episode.last_at

        def hours(at: datetime) -> float:
            return round((at - last) / HOUR, 3)

        before, baseline = episode.opening.before.rate, episode.opening.baseline.rate
        looks = [look for look in episode.looks if look.after.rate is not None]
        end = episode.decided_at or min(now, episode.window_end)
        rate = [(hours(look.at), look.after.rate or 0.0) for look in looks]
        counted = episode.looks[-1].after.exposure if episode.looks else 0.0
        if episode.after.rate is not None and episode.after.exposure > counted:
            rate.append((hours(min(now, episode.window_end)), episode.after.rate))
        regressed = None
        watch = episode.watch
        if episode.regressed_at is not None and watch is not None and watch.cusum.attempts:
            seen = watch.cusum.failures / watch.cusum.attempts
            regressed = (hours(episode.regressed_at), seen)
        return cls(
            key=key_text(key),
            kind=episode.members[0].kind,
            verdict=episode.verdict,
            per_hour=episode.opening.unit == "hours",
            before=before,
            baseline=baseline,
            pre_hours=rule.pre_hours,
            members=[hours(m.at) for m in episode.members],
            after_from=hours(episode.post_start),
            after_to=max(hours(end), hours(episode.post_start)),
            rate=rate,
            expected=[(hours(look.at), before * look.null_ratio) for look in looks]
            if before is not None
            else [],
            regressed=regressed,
        )

    def chart(self) -> LineChart:
        rate = "failures per hour" if self.per_hour else "failure rate"
        before = self.before
        last_x = max([self.after_to, *(x for x, _ in self.rate)])
        if self.regressed is not None:
            last_x = max(last_x, self.regressed[0])
        after = [*self.rate, *([self.regressed] if self.regressed is not None else [])]
        series = [
            Series(rate, [(-self.pre_hours, before), (0.0, before), *after]),
            Series(
                "what it had to beat",
                [(0.0, before), *self.expected] if self.expected else [],
                dashed=True,
                muted=True,
            ),
            Series(
                "the key's baseline",
                [(-self.pre_hours, self.baseline), (last_x, self.baseline)],
                muted=True,
            ),
        ]
        markers = [Marker(x, self.kind) for x in self.members]
        if self.regressed is not None:
            markers.append(Marker(self.regressed[0], "regressed"))
        return LineChart(
            title=f"{self.verdict}: {clean_cut(self.key, TITLE_KEY_CHARS)}",
            series=[s for s in series if s.points],
            x_name="hours after the intervention",
            y_format="number" if self.per_hour else "percent",
            markers=markers,
            spans=[Span(self.after_from, self.after_to, f"after: {self.verdict}")],
        )
