"""`observer status`: how the product is doing, in one look (or one JSON document for scripts).

It asks the parts that answer over HTTP (the webhook's `/health`, the Prefect server, its workers,
each deployment's last and next run) concurrently with short timeouts, and reads the files that say
the rest (the spool backlog, ops.jsonl, the corrections tailer's checkpoint, the Prefect database),
and draws a sparkline per endpoint of the last hours of ops.
It imports neither prefect nor polars, so it answers in well under two seconds. The exit status is
non-zero when the webhook, the Prefect server or the worker is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson
from pydantic import BaseModel, Field
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from observer.catalog import FLOWS
from observer.charts import sparkline
from observer.files import count_lines, load_state
from observer.history.state import HistoryState
from observer.history.stream import open_stream, sealed_segments
from observer.instance import instance_of
from observer.intake.checkpoint import load_checkpoint, spool_backlog
from observer.jsfmt import UNDEFINED, js_string
from observer.pipelines.corrections import CorrectionsCheckpoint
from observer.prefect_database import configured_database_url
from observer.settings import Settings
from observer.upstream import GatewayOutage

TIMEOUT_SECONDS = 1.5
#: The trend per endpoint: the last TREND_HOURS in TREND_MARKS marks (15 minutes each), read from
#: at most TREND_MAX_OPS ops (the tail of ops.jsonl), the TREND_ENDPOINTS busiest endpoints.
TREND_HOURS = 6
TREND_MARKS = 24
TREND_MAX_OPS = 20_000
TREND_ENDPOINTS = 8


class Service(BaseModel):
    """A part that answers over HTTP: up or not, and what it said."""

    name: str
    url: str
    up: bool
    detail: str = ""


class RunSummary(BaseModel):
    name: str
    state: str
    when: str | None
    message: str = ""
    url: str = ""


class DeploymentStatus(BaseModel):
    name: str
    last_run: RunSummary | None = None
    next_run: str | None = None


class Backlog(BaseModel):
    """Acknowledged events not yet moved into ops.jsonl."""

    events: int
    bytes: int


class FileStatus(BaseModel):
    path: str
    exists: bool
    bytes: int = 0
    lines: int | None = None
    last_write: str | None = None


class HistoryStatus(BaseModel):
    """The sealed segments waiting for the history table (from the files and compact-history's
    state: the table itself is `observer history`'s to open)."""

    history: str
    location: str
    segments_waiting: int = 0
    bytes_waiting: int = 0
    last_upkeep_at: str | None = None


class CorrectionsStatus(BaseModel):
    path: str
    exists: bool
    offset: int
    size: int
    lag_bytes: int


class EndpointTrend(BaseModel):
    """One endpoint's ops and failures per mark of the trend, oldest first."""

    endpoint: str
    ops: list[int]
    failures: list[int]

    def volume(self) -> Text:
        """The sparkline of its ops, each mark coloured by its share of failures."""
        text = Text()
        for mark, ops, failed in zip(sparkline(self.ops), self.ops, self.failures, strict=True):
            share = failed / ops if ops else 0
            text.append(mark, style="red" if share >= 0.5 else "yellow" if failed else "green")
        return text

    def failed(self) -> Text:
        """The sparkline of its failures on the scale of its ops (a mark as high as the busiest
        mark's ops is all failures; blank: none)."""
        return Text(sparkline(self.failures, top=max(self.ops)), style="red")


class Trends(BaseModel):
    """The last hours per endpoint (busiest first), and how far back the ops read reached."""

    hours: float
    mark_minutes: float
    endpoints: list[EndpointTrend] = Field(default_factory=list)
    ops_read: int = 0
    oldest_read: str | None = (
        None  # the oldest op read, when the tail did not reach back far enough
    )


class DatabaseStatus(BaseModel):
    kind: str
    bytes: int | None = None


class ProductStatus(BaseModel):
    """Everything `observer status` shows; `healthy` decides its exit status."""

    checked_at: str
    webhook: Service
    prefect: Service
    worker: Service
    deployments: list[DeploymentStatus] = Field(default_factory=list)
    spool: Backlog
    ops: FileStatus
    history: HistoryStatus
    corrections: CorrectionsStatus
    prefect_db: DatabaseStatus
    gateway_outage: GatewayOutage
    trends: Trends

    @property
    def healthy(self) -> bool:
        return self.webhook.up and self.prefect.up and self.worker.up

    def __rich__(self) -> RenderableType:
        services = Table(title="Observer", title_justify="left", show_edge=False)
        for column in ("part", "state", "where", "detail"):
            services.add_column(column)
        for service in (self.webhook, self.prefect, self.worker):
            state = "[green]up[/]" if service.up else "[red]DOWN[/]"
            services.add_row(service.name, state, service.url, service.detail)
        runs = Table(title="Deployments", title_justify="left", show_edge=False)
        runs.add_column("deployment", no_wrap=True)
        runs.add_column("last run", no_wrap=True)
        runs.add_column("ended", no_wrap=True)
        runs.add_column("next run", no_wrap=True)
        runs.add_column("message", overflow="ellipsis", no_wrap=True, max_width=60)
        for deployment in self.deployments:
            last = deployment.last_run
            runs.add_row(
                deployment.name,
                _state_markup(last.state) if last else "-",
                (last.when or "-") if last else "-",
                deployment.next_run or "-",
                last.message if last else "",
            )
        data = Table(title="Data", title_justify="left", show_edge=False)
        for column in ("what", "state"):
            data.add_column(column)
        data.add_row("spool backlog", f"{self.spool.events} event(s), {self.spool.bytes} byte(s)")
        ops = self.ops
        data.add_row(
            "ops.jsonl",
            f"{ops.lines} line(s), {ops.bytes} byte(s), last write {ops.last_write or '-'}"
            if ops.exists
            else "not written yet",
        )
        history = self.history
        data.add_row(
            "history",
            f"{history.segments_waiting} sealed segment(s) waiting for the table"
            f" ({history.bytes_waiting} byte(s)); table {history.location}; last upkeep"
            f" {_short_time(history.last_upkeep_at) or 'never'}"
            if history.history == "on"
            else "off (OBSERVER_HISTORY): ops.jsonl is kept whole",
        )
        corrections = self.corrections
        data.add_row(
            "corrections",
            f"at byte {corrections.offset} of {corrections.size}, lag {corrections.lag_bytes} byte(s)"
            if corrections.exists
            else f"{corrections.path} does not exist yet",
        )
        database = self.prefect_db
        size = f", {database.bytes} byte(s)" if database.bytes is not None else ""
        data.add_row("Prefect database", database.kind + size)
        outage = self.gateway_outage
        data.add_row(
            "gateway posts",
            outage.wait_reason() or f"down since {outage.down_since}: the next run tries"
            if outage.down
            else "delivered (no outage going on)",
        )
        return Group(services, "", runs, "", data, "", self._trend_table())

    def _trend_table(self) -> RenderableType:
        trends = self.trends
        title = (
            f"Last {trends.hours:g} h per endpoint (a mark per {trends.mark_minutes:g} min;"
            " green: no failure, yellow: some, red: half or more)"
        )
        if not trends.endpoints:
            return Text(f"{title}: no ops in that time")
        table = Table(title=title, title_justify="left", show_edge=False)
        table.add_column("endpoint", overflow="ellipsis", no_wrap=True, max_width=40)
        table.add_column("ops", no_wrap=True)
        table.add_column("failures", no_wrap=True)
        table.add_column("ops", justify="right")
        table.add_column("failed", justify="right")
        for trend in trends.endpoints:
            failed = sum(trend.failures)
            table.add_row(
                Text(trend.endpoint),
                trend.volume(),
                trend.failed(),
                str(sum(trend.ops)),
                Text(str(failed), style="red" if failed else ""),
            )
        if trends.oldest_read is not None:
            table.caption = f"from the last {trends.ops_read} ops only (since {trends.oldest_read})"
        return table


def _state_markup(state: str) -> str:
    colour = {"COMPLETED": "green", "FAILED": "red", "CRASHED": "red", "CANCELLED": "yellow"}
    return f"[{colour.get(state.upper(), 'white')}]{state}[/]"


# ── gathering ───────────────────────────────────────────────────────────────────────────────────


def gather(settings: Settings) -> ProductStatus:
    """Ask every part, concurrently where it is over HTTP."""
    webhook, prefect, worker, deployments = asyncio.run(_ask_services(settings))
    return ProductStatus(
        checked_at=datetime.now(UTC).isoformat(timespec="seconds"),
        webhook=webhook,
        prefect=prefect,
        worker=worker,
        deployments=deployments,
        spool=_spool(settings),
        ops=_ops_file(settings.layout.ops_path),
        history=_history(settings),
        corrections=_corrections(settings),
        prefect_db=_database(settings),
        gateway_outage=GatewayOutage.read(settings),
        trends=_trends(settings),
    )


async def _ask_services(
    settings: Settings,
) -> tuple[Service, Service, Service, list[DeploymentStatus]]:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    webhook_url = f"http://{host}:{settings.port}"
    api = (settings.prefect_api_url or "").rstrip("/")
    instance = instance_of(settings)
    async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS) as client:
        webhook_task = _webhook(client, webhook_url)
        if not api:
            webhook = await webhook_task
            missing = "PREFECT_API_URL is not set (and no prefect.toml here)"
            return (
                webhook,
                Service(name="Prefect server", url="-", up=False, detail=missing),
                Service(name="worker", url="-", up=False, detail=missing),
                [DeploymentStatus(name=instance.deployment(name)) for name in FLOWS],
            )
        results = await asyncio.gather(
            webhook_task,
            _prefect(client, api),
            _worker(client, api, instance.work_pool),
            *(_deployment(client, api, instance.deployment(name)) for name in FLOWS),
        )
    webhook, prefect, worker, *deployments = results
    return webhook, prefect, worker, deployments  # type: ignore[return-value]


async def _webhook(client: httpx.AsyncClient, url: str) -> Service:
    try:
        health = (await client.get(f"{url}/health")).json()
    except (httpx.HTTPError, ValueError) as exc:
        return Service(name="webhook", url=url, up=False, detail=_why(exc))
    gateway = health.get("gateway", {}).get("reachable")
    detail = (
        f"{health.get('queued', 0)} queued, {health.get('write_errors', 0)} write error(s),"
        f" gateway {'reachable' if gateway else 'not reachable' if gateway is False else '?'}"
    )
    return Service(name="webhook", url=url, up=health.get("status") == "ok", detail=detail)


async def _prefect(client: httpx.AsyncClient, api: str) -> Service:
    ui = api.removesuffix("/api")
    try:
        response = await client.get(f"{api}/health")
        up = response.status_code == 200
        detail = "" if up else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        up, detail = False, _why(exc)
    return Service(name="Prefect server", url=ui, up=up, detail=detail)


async def _worker(client: httpx.AsyncClient, api: str, pool: str) -> Service:
    url = f"{api}/work_pools/{pool}/workers/filter"
    try:
        response = await client.post(url, json={"limit": 10})
        response.raise_for_status()
        workers = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return Service(name="worker", url=f"pool {pool}", up=False, detail=_why(exc))
    online = [w for w in workers if w.get("status") == "ONLINE"]
    detail = ", ".join(f"{w['name']} (beat {_ago(w.get('last_heartbeat_time'))})" for w in online)
    return Service(
        name="worker",
        url=f"pool {pool}",
        up=bool(online),
        detail=detail or f"no worker online ({len(workers)} known)",
    )


async def _deployment(client: httpx.AsyncClient, api: str, name: str) -> DeploymentStatus:
    ui = api.removesuffix("/api")

    def query(states: list[str], sort: str) -> dict[str, Any]:
        return {
            "flow_runs": {"state": {"type": {"any_": states}}},
            "deployments": {"name": {"any_": [name]}},
            "sort": sort,
            "limit": 1,
        }

    finished = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED", "RUNNING", "PENDING", "CANCELLING"]
    try:
        last, upcoming = await asyncio.gather(
            client.post(f"{api}/flow_runs/filter", json=query(finished, "START_TIME_DESC")),
            client.post(
                f"{api}/flow_runs/filter", json=query(["SCHEDULED"], "EXPECTED_START_TIME_ASC")
            ),
        )
        last_runs, next_runs = last.json(), upcoming.json()
    except (httpx.HTTPError, ValueError):
        return DeploymentStatus(name=name)
    summary = None
    if last_runs:
        run = last_runs[0]
        state = run.get("state") or {}
        summary = RunSummary(
            name=run.get("name", ""),
            state=state.get("name") or state.get("type", "?"),
            when=_short_time(run.get("end_time") or run.get("start_time")),
            message=(state.get("message") or "").replace("\n", " "),
            url=f"{ui}/runs/flow-run/{run['id']}",
        )
    next_run = _short_time(next_runs[0].get("expected_start_time")) if next_runs else None
    return DeploymentStatus(name=name, last_run=summary, next_run=next_run)


# ── files ───────────────────────────────────────────────────────────────────────────────────────


def _spool(settings: Settings) -> Backlog:
    events, size = spool_backlog(settings, load_checkpoint(settings))
    return Backlog(events=events, bytes=size)


def _ops_file(path: Path) -> FileStatus:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return FileStatus(path=str(path), exists=False)
    return FileStatus(
        path=str(path),
        exists=True,
        bytes=stat.st_size,
        lines=count_lines(path),
        last_write=_short_time(datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()),
    )


def _history(settings: Settings) -> HistoryStatus:
    state = load_state(settings.layout.history_state, HistoryState)
    committed = state.committed_of(load_checkpoint(settings).stream)
    waiting = [s for s in sealed_segments(settings.layout) if s.end > committed]
    return HistoryStatus(
        history=settings.history,
        location=settings.history_location,
        segments_waiting=len(waiting),
        bytes_waiting=sum(s.end - max(s.base, committed) for s in waiting),
        last_upkeep_at=state.last_upkeep_at,
    )


def _corrections(settings: Settings) -> CorrectionsStatus:
    path = settings.corrections_path
    checkpoint = load_state(settings.layout.corrections_checkpoint, CorrectionsCheckpoint)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return CorrectionsStatus(path=str(path), exists=False, offset=0, size=0, lag_bytes=0)
    return CorrectionsStatus(
        path=str(path),
        exists=True,
        offset=checkpoint.offset,
        size=size,
        lag_bytes=max(0, size - checkpoint.offset),
    )


class RecentOp(NamedTuple):
    timestamp: datetime
    endpoint: str
    success: bool


def recent_ops(settings: Settings, since: datetime) -> list[RecentOp]:
    """The ops since `since`, oldest first: the newest ops on disk (ops.jsonl, then the sealed
    segments kept beside it; at most TREND_MAX_OPS lines, newest first, stopping at the first op
    older than `since`), read without polars or the history table so the status stays quick.
    Lines that are not ops, or carry no readable timestamp, are skipped."""
    found = []
    with open_stream(settings) as files:
        newest = files.tail(TREND_MAX_OPS).lines
    for line in reversed(newest):
        try:
            op = orjson.loads(line)
            moment = datetime.fromisoformat(op["timestamp"])
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            continue
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        if moment < since:
            break
        endpoint = op.get("endpoint", UNDEFINED)
        found.append(
            RecentOp(
                moment,
                endpoint if isinstance(endpoint, str) else js_string(endpoint),
                op.get("success") is True,
            )
        )
    found.reverse()
    return found


def trends(ops: list[RecentOp], now: datetime, *, reached_back: bool) -> Trends:
    """Ops and failures per endpoint per mark over the last TREND_HOURS; ops dated after `now`
    (another clock) count in the last mark. `reached_back`: the read went back to the start."""
    width = timedelta(hours=TREND_HOURS) / TREND_MARKS
    start = now - timedelta(hours=TREND_HOURS)
    per_endpoint: dict[str, EndpointTrend] = {}
    for op in ops:
        if op.timestamp < start:
            continue
        mark = min(TREND_MARKS - 1, int((op.timestamp - start) / width))
        trend = per_endpoint.get(op.endpoint)
        if trend is None:
            trend = per_endpoint[op.endpoint] = EndpointTrend(
                endpoint=op.endpoint, ops=[0] * TREND_MARKS, failures=[0] * TREND_MARKS
            )
        trend.ops[mark] += 1
        trend.failures[mark] += not op.success
    busiest = sorted(per_endpoint.values(), key=lambda t: (-sum(t.ops), t.endpoint))
    return Trends(
        hours=TREND_HOURS,
        mark_minutes=width.total_seconds() / 60,
        endpoints=busiest[:TREND_ENDPOINTS],
        ops_read=len(ops),
        oldest_read=None if reached_back or not ops else _short_time(ops[0].timestamp.isoformat()),
    )


def _trends(settings: Settings) -> Trends:
    now = datetime.now(UTC)
    since = now - timedelta(hours=TREND_HOURS)
    ops = recent_ops(settings, since)
    return trends(ops, now, reached_back=len(ops) < TREND_MAX_OPS)


def _database(settings: Settings) -> DatabaseStatus:
    _, url = configured_database_url(os.environ)
    if url and url.startswith("postgresql"):
        return DatabaseStatus(kind="PostgreSQL")
    home = settings.layout.prefect_home
    size = 0
    for name in ("prefect.db", "prefect.db-wal", "prefect.db-shm"):
        with contextlib.suppress(FileNotFoundError):
            size += (home / name).stat().st_size
    return DatabaseStatus(kind=f"SQLite ({home / 'prefect.db'})", bytes=size)


# ── wording ─────────────────────────────────────────────────────────────────────────────────────


def _why(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "not answering (connection refused)"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {TIMEOUT_SECONDS:g} s"
    return f"{type(exc).__name__}: {exc}"[:120]


def _short_time(value: str | None) -> str | None:
    """An API timestamp as `2026-12-02 10:31:05Z` (UTC, seconds)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(value: str | None) -> str:
    if not value:
        return "never"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    seconds = (datetime.now(UTC) - moment).total_seconds()
    return f"{seconds:.0f} s ago"


def show_status(settings: Settings, *, as_json: bool) -> int:
    """Print the status (a table, or JSON with `as_json`); 0 when everything is up, else 1."""
    status = gather(settings)
    if as_json:
        print(status.model_dump_json(indent=2))
    else:
        Console().print(status)
    return 0 if status.healthy else 1
