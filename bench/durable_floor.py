"""The least a durable HTTP answer costs in Python here: the floor for `bench webhook`'s cells.

A bare uvloop protocol that takes each request as wrk sends it (head and body in one read), writes
the body into space allocated ahead and makes it durable on the loop's thread (`pwrite` +
`fdatasync`, the spool's own way), then answers a fixed 200. No HTTP parser, no validation, no
op line. With one connection every request waits for its own flush anyway, so it is written at
once. With more, group commit as plainly as it gets: the bodies read in one loop turn are written
together, made durable with one flush, then answered.

Run as `python -m bench.durable_floor PORT FILE`; it prints `listening` once it accepts
connections and stops on SIGINT or SIGTERM. It serves only the benchmark's own requests
(`Content-Length`, no chunking, one request per read) and is not a server for anything else.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import uvloop

from bench.common import AllocatedFile

ANSWER = b'{"accepted":true,"ring_size":0}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)


class GroupCommit:
    """The server's one file: each body made durable, then its request answered; the bodies of a
    loop turn together when more than one client is connected."""

    def __init__(self, target: AllocatedFile, loop: asyncio.AbstractEventLoop) -> None:
        self.target = target
        self.loop = loop
        self.clients = 0
        self.bodies: list[bytes] = []
        self.waiting: list[asyncio.Transport] = []

    def add(self, body: bytes, transport: asyncio.Transport) -> None:
        self.bodies.append(body)
        self.waiting.append(transport)
        if self.clients == 1:
            self.flush()  # nothing could join it
        elif len(self.bodies) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        bodies, waiting = self.bodies, self.waiting
        if not bodies:
            return  # (flushed at once since: the last other client left)
        self.bodies, self.waiting = [], []
        self.target.write_durably(b"".join(bodies))
        for transport in waiting:
            transport.write(RESPONSE)


class DurableFloor(asyncio.Protocol):
    """One connection: every request's body handed to the group commit, answered once durable."""

    def __init__(self, group: GroupCommit) -> None:
        self.group = group  # shared by the connections
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.group.clients += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.group.clients -= 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.group.add(data.partition(b"\r\n\r\n")[2] + b"\n", self.transport)


async def serve(port: int, path: str) -> None:
    target = AllocatedFile(Path(path))
    loop = asyncio.get_running_loop()
    group = GroupCommit(target, loop)
    server = await loop.create_server(lambda: DurableFloor(group), "127.0.0.1", port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("listening", flush=True)
    await stop.wait()
    server.close()
    target.close()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
