"""The webhook under hostile clients, as a real process on 127.0.0.1, through raw sockets: heads
bounded in size and time, bodies in time, connections in number; half-closed and vanished clients."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from observer.settings import Settings, load_settings
from tests.fakes import WebhookProcess, spool_records

HEAD_LIMIT = 8192
LIMITS = {
    "OBSERVER_MAX_HEADER_BYTES": str(HEAD_LIMIT),
    "OBSERVER_HEADER_TIMEOUT": "1",
    "OBSERVER_BODY_TIMEOUT": "1",
    "OBSERVER_KEEPALIVE_TIMEOUT": "1",
}
EVENT = b'{"event_kind":"fill","role":"welder","count":2,"success":true}'


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WebhookProcess, Settings]]:
    """One webhook with LIMITS for the tests that share its settings (each starts its own
    connections, and counts the spool records it adds)."""
    home = tmp_path_factory.mktemp("guarded")
    env = {
        "OBSERVER_DATA_DIR": str(home / "data"),
        "OVERSEER_CORRECTIONS_PATH": str(home / "corrections.jsonl"),
        "GATEWAY_URL": "http://127.0.0.1:9",
        **LIMITS,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("OBSERVER_")]:
            patch.delenv(name)
        webhook = WebhookProcess(env, cwd=home)
        try:
            yield webhook, load_settings(data_dir=home / "data")
        finally:
            webhook.stop()


def connect(webhook: WebhookProcess, timeout: float = 10) -> socket.socket:
    host, port = webhook.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def request(
    path: str = "/health", *, method: str = "GET", body: bytes = b"", pad: int = 0
) -> bytes:
    """One request, its head padded with an `x-pad` header of `pad` bytes."""
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n".encode()
    if body:
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    if pad:
        head += b"x-pad: " + b"a" * pad + b"\r\n"
    return head + b"\r\n" + body


def sized_head(size: int) -> bytes:
    """A GET /health whose request line and headers are exactly `size` bytes."""
    bare = len(request(pad=1)) - 1
    return request(pad=size - bare)


_unread: dict[int, bytes] = {}  # bytes read past an answer, by socket: the next answer's start


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer: status, headers, body (by content-length)."""
    data = _unread.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside an answer"
        rest += chunk
    if rest[length:]:
        _unread[sock.fileno()] = rest[length:]
    return int(lines[0].split()[1]), headers, rest[:length]


def closed_after(sock: socket.socket, limit: float = 10) -> float:
    """Seconds until the server closes `sock` (reading and discarding), at most `limit`."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def rss_kb(webhook: WebhookProcess) -> int:
    for line in Path(f"/proc/{webhook.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ── head size ───────────────────────────────────────────────────────────────────────────────────


def test_a_head_at_the_limit_passes_and_one_byte_more_is_431_and_closed(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    webhook, _ = guarded
    with connect(webhook) as sock:
        sock.sendall(sized_head(HEAD_LIMIT))
        assert read_answer(sock)[0] == 200
    with connect(webhook) as sock:
        sock.sendall(sized_head(HEAD_LIMIT + 1))
        status, headers, body = read_answer(sock)
        assert status == 431
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert orjson.loads(body)["error"] == (
            f"request line and headers larger than the limit of {HEAD_LIMIT} bytes"
        )
        assert closed_after(sock) < 5
    with connect(webhook) as sock:  # the request line counts too
        sock.sendall(request("/health?" + "q" * HEAD_LIMIT))
        assert read_answer(sock)[0] == 431


def test_an_endless_header_is_cut_at_the_limit_while_others_are_served(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    webhook, settings = guarded
    before, records = rss_kb(webhook), len(spool_records(settings))
    sent_per_attempt: list[int] = []
    answers: list[bytes] = []

    def endless_header() -> None:
        """Send a 100 MB header, reading concurrently; five times over."""
        for _ in range(5):
            with connect(webhook) as sock:
                received: list[bytes] = []
                reader = threading.Thread(target=_read_all, args=(sock, received))
                reader.start()
                sent = 0
                try:
                    sock.sendall(b"POST /event HTTP/1.1\r\nhost: x\r\nx-endless: ")
                    chunk = b"a" * 65536
                    while sent < 100 * 1024 * 1024:
                        sock.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    pass
                reader.join(timeout=30)
                sent_per_attempt.append(sent)
                answers.append(b"".join(received))

    hostile = threading.Thread(target=endless_header)
    hostile.start()
    statuses = []
    with httpx.Client(base_url=webhook.url) as client:
        while hostile.is_alive() or len(statuses) < 20:
            statuses.append(client.post("/event", content=EVENT).status_code)
    hostile.join()
    assert set(statuses) == {200}
    assert len(spool_records(settings)) - records == len(statuses)  # none of the endless ones
    assert all(answer.startswith(b"HTTP/1.1 431 ") for answer in answers), answers
    # Closed after the limit: what was sent is what the socket buffers took, not 100 MB.
    assert max(sent_per_attempt) < 32 * 1024 * 1024, sent_per_attempt
    assert rss_kb(webhook) - before < 16 * 1024


def _read_all(sock: socket.socket, into: list[bytes]) -> None:
    try:
        while chunk := sock.recv(65536):
            into.append(chunk)
    except OSError:
        pass


def test_pipelined_requests_are_measured_one_head_at_a_time(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    webhook, _ = guarded
    with connect(webhook) as sock:  # two heads under the limit in one write: both served
        sock.sendall(request() + request(pad=HEAD_LIMIT - 200))
        assert read_answer(sock)[0] == 200
        assert read_answer(sock)[0] == 200
    for pad in (HEAD_LIMIT - 40, 3 * HEAD_LIMIT):  # the second head is over: served, then 431
        with connect(webhook) as sock:
            sock.sendall(request() + request(pad=pad))
            assert read_answer(sock)[0] == 200
            assert read_answer(sock)[0] == 431
            assert closed_after(sock) < 5


# ── time ────────────────────────────────────────────────────────────────────────────────────────


def test_slow_or_missing_heads_and_idle_connections_are_closed(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    webhook, _ = guarded
    silent, trickle, idle = connect(webhook), connect(webhook), connect(webhook)
    idle.sendall(request())
    assert read_answer(idle)[0] == 200
    # Answered by the protocol itself (no uvicorn keep-alive timer), then idle: the sweeper's.
    idle_direct, idle_mixed = connect(webhook), connect(webhook)
    idle_direct.sendall(request("/event", method="POST", body=EVENT))
    assert read_answer(idle_direct)[0] == 200
    idle_mixed.sendall(request("/event", method="POST", body=EVENT) + request())
    assert read_answer(idle_mixed)[0] == read_answer(idle_mixed)[0] == 200
    started = time.monotonic()
    closed: dict[str, float] = {}

    def watch(name: str, sock: socket.socket) -> None:
        closed_after(sock)
        closed[name] = time.monotonic() - started

    def drip() -> None:  # a whole head would take 8 s at this pace
        with contextlib.suppress(OSError):
            for byte in request(pad=45):
                trickle.send(bytes([byte]))
                time.sleep(0.1)

    threads = [threading.Thread(target=drip)]
    connections = {
        "silent": silent,
        "trickle": trickle,
        "idle": idle,
        "idle_direct": idle_direct,
        "idle_mixed": idle_mixed,
    }
    threads += [threading.Thread(target=watch, args=item) for item in connections.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sock in connections.values():
        sock.close()
    # Timeouts of 1 s, checked four times a second; the upper bound leaves room for a busy machine.
    assert all(0.5 < seconds < 5 for seconds in closed.values()), closed
    assert set(closed) == set(connections)


def test_a_connection_that_keeps_sending_within_the_keep_alive_timeout_stays_open(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    """Each direct answer starts the idle clock afresh: 0.6 s pauses under a 1 s timeout, 3 s in all."""
    webhook, _ = guarded
    with connect(webhook) as sock:
        for _ in range(5):
            sock.sendall(request("/event", method="POST", body=EVENT))
            assert read_answer(sock)[0] == 200
            time.sleep(0.6)
        sock.sendall(request("/event", method="POST", body=EVENT))
        assert read_answer(sock)[0] == 200


def test_a_slow_body_is_closed_and_nothing_is_stored(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    webhook, settings = guarded
    records = len(spool_records(settings))
    with connect(webhook) as sock:
        sock.sendall(request("/event", method="POST", body=EVENT)[: -len(EVENT) // 2])
        assert 0.5 < closed_after(sock) < 5
    assert len(spool_records(settings)) == records
    assert httpx.post(f"{webhook.url}/event", content=EVENT).status_code == 200


# ── number ──────────────────────────────────────────────────────────────────────────────────────


def test_connections_over_the_cap_get_503_and_the_admitted_ones_keep_working(
    observer_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**observer_env, **LIMITS, "OBSERVER_MAX_CONNECTIONS": "4"}
    webhook = WebhookProcess(env | {"OBSERVER_KEEPALIVE_TIMEOUT": "30"}, cwd=tmp_path)
    try:
        _over_the_cap(webhook)
    finally:
        webhook.stop()


def _over_the_cap(webhook: WebhookProcess) -> None:
    admitted = [connect(webhook) for _ in range(4)]
    for sock in admitted:
        sock.sendall(request())
        assert read_answer(sock)[0] == 200
    with connect(webhook) as extra:
        extra.sendall(request("/event", method="POST", body=EVENT))
        status, headers, body = read_answer(extra)
        assert (status, headers["retry-after"], headers["connection"]) == (503, "1", "close")
        assert "too many open connections" in orjson.loads(body)["error"]
        assert closed_after(extra) < 5
    for sock in admitted:  # never starved by the ones refused
        sock.sendall(request("/event", method="POST", body=EVENT))
        assert read_answer(sock)[0] == 200
    admitted.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the closed one's place is free once the server has seen it go
        with connect(webhook) as sock:
            sock.sendall(request())
            if read_answer(sock)[0] == 200 or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    with connect(webhook) as sock:
        sock.sendall(request())
        assert read_answer(sock)[0] == 200
    for sock in admitted:
        sock.close()


# ── clients that leave ──────────────────────────────────────────────────────────────────────────


def test_a_client_that_half_closes_after_its_post_gets_its_answer(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    webhook, settings = guarded
    records = len(spool_records(settings))
    with connect(webhook) as sock:
        sock.sendall(request("/event", method="POST", body=EVENT))
        sock.shutdown(socket.SHUT_WR)
        status, headers, body = read_answer(sock)
        assert status == 200 and orjson.loads(body)["accepted"] is True
        # Then the server closes; its answer says so when it saw the half-close before answering
        # (a sole client's event can be fsync'd and answered first).
        assert headers.get("connection", "close") == "close"
        sock.settimeout(5)
        assert sock.recv(1) == b""
    assert len(spool_records(settings)) == records + 1


def test_a_body_cut_short_by_a_disconnect_is_not_stored(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    webhook, settings = guarded
    records = len(spool_records(settings))
    with connect(webhook) as sock:  # a complete JSON object, but the declared length is longer
        head = request("/event", method="POST", body=EVENT + b" " * 20)
        sock.sendall(head[:-20])
        time.sleep(0.2)
    time.sleep(0.3)
    assert httpx.post(f"{webhook.url}/event", content=EVENT).status_code == 200
    assert len(spool_records(settings)) == records + 1


def test_a_post_that_expects_100_continue_gets_it_before_sending_its_body(
    guarded: tuple[WebhookProcess, Settings],
) -> None:
    """Such a request goes the ASGI way; the scope uvicorn reads is made once the head is parsed,
    and must still carry the head's `Expect` (and its other headers)."""
    webhook, settings = guarded
    records = len(spool_records(settings))
    head = request("/event", method="POST", body=EVENT).removesuffix(b"\r\n" + EVENT)
    with connect(webhook) as sock:
        sock.sendall(head + b"expect: 100-continue\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(EVENT)
        status, headers, body = read_answer(sock)
        assert status == 200 and orjson.loads(body)["accepted"] is True
        assert headers["content-type"] == "application/json"
    assert len(spool_records(settings)) == records + 1
