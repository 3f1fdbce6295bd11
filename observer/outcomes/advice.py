"""Repeated advice without effect: the same advice on the same key, pooled.

Advice text is normalised as failure messages are grouped (numbers, ids, quoted values, paths and
URLs become placeholders; `observer.pipelines.grouping`), lower-cased and cut into word tokens.
Two texts are the same advice when the Jaccard similarity of their token sets reaches
`ADVICE_SIMILARITY`; an intervention joins the first cluster of its kind and key whose first text
is that similar, else it starts one.

A cluster alerts once, when `REPEAT_MIN` of its episodes within `REPEAT_DAYS` ended without
`worked` and the pooled evidence of every episode decided in that span (the exact convolution test
against each episode's minimum effect) says the advice is not the fix. A confounded set counts once:
its members share one episode.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime

from pydantic import BaseModel, Field

from observer.outcomes.episodes import Episode
from observer.outcomes.interventions import Intervention, Key, Kind
from observer.outcomes.lookback import Window
from observer.outcomes.rule import OutcomeRule
from observer.outcomes.stats import mantel_haenszel, pooled_increased_p
from observer.outcomes.view import AlertRecord, Amount, CoveredIntervention
from observer.pipelines.grouping import normalise_error

ALERT_HINT = "look for a data gap or a broken dependency, not a drift"
NOT_WORKED = frozenset({"did-not-work", "worse", "not-attributable", "inconclusive", "regressed"})
_TOKEN = re.compile(r"<[a-z]+>|[^\W_]+")


def advice_tokens(text: str) -> list[str]:
    """The advice's normalised word tokens, sorted and unique."""
    return sorted(set(_TOKEN.findall(normalise_error(text).lower())))


def similarity(left: Iterable[str], right: Iterable[str]) -> float:
    """Jaccard similarity of two token sets (1.0 for two empty texts)."""
    a, b = set(left), set(right)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


class AdviceCluster(BaseModel):
    """Interventions of one kind on one key with similar advice."""

    id: str
    kind: Kind
    key: Key
    advice: str  # the first member's text
    tokens: list[str]
    members: list[str] = Field(default_factory=list)  # intervention ids, in arrival order
    alerted_at: datetime | None = None


def cluster_for(
    clusters: dict[str, AdviceCluster], intervention: Intervention, threshold: float
) -> AdviceCluster:
    """The cluster the intervention belongs to (made when none is similar enough); it is added."""
    tokens = advice_tokens(intervention.advice)
    for cluster in clusters.values():
        if (
            cluster.kind == intervention.kind
            and cluster.key.id == intervention.key.id
            and similarity(cluster.tokens, tokens) >= threshold
        ):
            break
    else:
        digest = hashlib.sha256(" ".join(tokens).encode()).hexdigest()[:12]
        cluster = AdviceCluster(
            id=f"{intervention.kind}:{intervention.key.id}:{digest}",
            kind=intervention.kind,
            key=intervention.key,
            advice=intervention.advice,
            tokens=tokens,
        )
        clusters[cluster.id] = cluster
    if intervention.id not in cluster.members:
        cluster.members.append(intervention.id)
    return cluster


class PooledEvidence(BaseModel):
    """The cluster's decided episodes in the span, pooled."""

    episodes: int
    not_worked: int
    before: Window
    after: Window
    rate_ratio: float | None  # Mantel–Haenszel, after/before
    p_not_the_fix: float  # exact pooled test against each episode's minimum effect


class Alert(BaseModel):
    """Repeated advice without effect: posted once per cluster."""

    kind: str = "repeated-advice"
    id: str
    at: datetime
    rule_version: str
    advice: str
    key: Key
    interventions: list[CoveredIntervention]
    pooled: PooledEvidence

    @property
    def message(self) -> str:
        pooled = self.pooled
        ratio = "n/a" if pooled.rate_ratio is None else f"{pooled.rate_ratio:.2f}"
        return (
            f"the same advice {len(self.interventions)} times on {self.key} without effect:"
            f" {pooled.not_worked} of {pooled.episodes} episode(s) did not work; pooled failures"
            f" {pooled.before.failures}/{_amount(pooled.before)} before,"
            f" {pooled.after.failures}/{_amount(pooled.after)} after, rate ratio {ratio}"
            f" (p = {pooled.p_not_the_fix:.3g} that it is the fix): the advice is not the fix;"
            f" {ALERT_HINT}"
        )

    def record(self) -> AlertRecord:
        """The alert as shown and printed (`observer outcomes`)."""
        pooled = self.pooled
        return AlertRecord(
            id=self.id,
            at=self.at,
            advice=self.advice,
            key=self.key.describe(),
            interventions=self.interventions,
            before=Amount(attempts=pooled.before.exposure, failures=pooled.before.failures),
            after=Amount(attempts=pooled.after.exposure, failures=pooled.after.failures),
            rate_ratio=pooled.rate_ratio,
            p_not_the_fix=pooled.p_not_the_fix,
            message=self.message,
            rule_version=self.rule_version,
        )


def _amount(window: Window) -> str:
    return f"{window.exposure:g}"


def check_cluster(
    rule: OutcomeRule,
    cluster: AdviceCluster,
    episodes: Mapping[str, Episode],
    at: datetime,
) -> Alert | None:
    """The cluster's alert, if it is due now (and was not given before)."""
    if cluster.alerted_at is not None:
        return None
    members = [episodes[m] for m in cluster.members if m in episodes]
    if not members:
        return None
    latest = max(e.members[-1].at for e in members)
    span_start = latest - rule.repeat_span
    distinct: dict[str, Episode] = {}
    for episode in members:
        if episode.decision is not None and episode.last_at >= span_start:
            distinct.setdefault(episode.id, episode)
    decided = list(distinct.values())
    not_worked = [e for e in decided if e.verdict in NOT_WORKED]
    if len(not_worked) < rule.repeat_min:
        return None
    strata = [e.judged_counts for e in decided]
    p_value = pooled_increased_p(strata, [e.null_ratio * rule.min_effect for e in decided])
    if p_value > rule.alpha:
        return None
    pooled = PooledEvidence(
        episodes=len(decided),
        not_worked=len(not_worked),
        before=Window(
            exposure=sum(s.e_before for s in strata), failures=sum(s.f_before for s in strata)
        ),
        after=Window(
            exposure=sum(s.e_after for s in strata), failures=sum(s.f_after for s in strata)
        ),
        rate_ratio=mantel_haenszel(strata),
        p_not_the_fix=p_value,
    )
    covered = [
        CoveredIntervention(id=m.id, at=m.at, verdict=e.verdict)
        for e in decided
        for m in e.members
        if m.id in cluster.members
    ]
    cluster.alerted_at = at
    return Alert(
        id=f"alert:{cluster.id}",
        at=at,
        rule_version=rule.version,
        advice=cluster.advice,
        key=cluster.key,
        interventions=sorted(covered, key=lambda c: (c.at, c.id)),
        pooled=pooled,
    )
