"""No body is ever a 500: generated bodies through the real ASGI app and the real server, and the
original's number bytes through the real server (golden lines recorded from the original)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from observer.pipelines.ingest import drain_spool
from observer.settings import Settings
from observer.webhook.app import WebhookApp
from tests.bodies import Body, bodies, check_answer
from tests.fakes import WebhookProcess, spool_records

GOLDEN = Path(__file__).parent / "golden"
PROPERTY = hypothesis_settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Spool:
    """The spool's records, and which of them are new since the last look."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen = 0

    def new_records(self) -> list[bytes]:
        records = spool_records(self.settings)
        new, self.seen = records[self.seen :], len(records)
        return new


@contextmanager
def running_app(
    settings: Settings,
) -> Iterator[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
    """`WebhookApp` in this process with its lifespan (the intake and its fsync helper), and an
    HTTP client that calls it directly."""
    app = WebhookApp(settings)
    loop = asyncio.new_event_loop()
    to_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def start() -> asyncio.Task[None]:
        task = asyncio.ensure_future(app({"type": "lifespan"}, to_app.get, from_app.put))
        await to_app.put({"type": "lifespan.startup"})
        assert (await from_app.get())["type"] == "lifespan.startup.complete"
        return task

    async def stop(task: asyncio.Task[None]) -> None:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await task

    task = loop.run_until_complete(start())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://webhook")
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(stop(task))
        loop.close()


def test_generated_bodies_through_the_asgi_app_are_never_a_500(settings: Settings) -> None:
    spool = Spool(settings)
    with running_app(settings) as (loop, client):

        @PROPERTY
        @given(body=bodies())
        def post(body: Body) -> None:
            answer = loop.run_until_complete(client.post("/event", content=body.raw))
            check_answer(
                body,
                answer.status_code,
                answer.headers.get("content-type", ""),
                answer.content,
                spool.new_records(),
            )

        post()


def test_generated_bodies_through_the_real_server_are_never_a_500(
    webhook: WebhookProcess, settings: Settings
) -> None:
    spool = Spool(settings)
    with httpx.Client(base_url=webhook.url) as client:

        @hypothesis_settings(PROPERTY, max_examples=100)
        @given(body=bodies())
        def post(body: Body) -> None:
            answer = client.post("/event", content=body.raw)
            check_answer(
                body,
                answer.status_code,
                answer.headers.get("content-type", ""),
                answer.content,
                spool.new_records(),
            )

        post()
    assert webhook.process.poll() is None


def test_big_numbers_and_a_bom_through_the_server_give_the_originals_lines(
    webhook: WebhookProcess, settings: Settings
) -> None:
    with httpx.Client(base_url=webhook.url) as client:
        for body in (GOLDEN / "odd_bodies.jsonl").read_bytes().splitlines():
            assert client.post("/event", content=body).status_code == 200, body
        # The 500s: beyond 64 bits, as a number and as a string.
        for body in (b'{"count":1e20}', b'{"duration_ms":"99999999999999999999"}'):
            assert client.post("/event", content=body).status_code == 200, body
        refused = client.post("/event", content=b'{"count":1e400,"duration_ms":-1e400}')
    assert refused.status_code == 422
    assert {d["field"] for d in refused.json()["details"]} == {"count", "duration_ms"}
    drain_spool(settings)
    lines = settings.layout.ops_path.read_bytes().splitlines()
    assert lines[:-2] == (GOLDEN / "original_odd_ops.jsonl").read_bytes().splitlines()
    assert b'"count":100000000000000000000,' in lines[-2]
    assert b'"duration_ms":100000000000000000000,' in lines[-1]
