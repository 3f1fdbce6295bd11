"""The least a durable HTTP answer costs in Python here: the floor for `bench webhook`'s one
connection.

A bare uvloop protocol that takes each request as wrk sends it (head and body in one read), writes
the body into space allocated ahead and makes it durable on the loop's thread (`pwrite` +
`fdatasync`, the spool's own way), then answers a fixed 200. No HTTP parser, no validation, no
op line, no group commit: with one connection every request waits for its own flush anyway, so
nothing a real webhook adds can make it faster than this.

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


class DurableFloor(asyncio.Protocol):
    """One connection: every request's body made durable, then answered."""

    def __init__(self, target: AllocatedFile) -> None:
        self.target = target  # shared by the connections
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.target.write_durably(data.partition(b"\r\n\r\n")[2] + b"\n")
        assert self.transport is not None
        self.transport.write(RESPONSE)


async def serve(port: int, path: str) -> None:
    target = AllocatedFile(Path(path))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DurableFloor(target), "127.0.0.1", port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("listening", flush=True)
    await stop.wait()
    server.close()
    target.close()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
