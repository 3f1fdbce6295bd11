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
import os
import signal
import sys

import uvloop

from observer.intake.spool import PREALLOCATE_BYTES

ANSWER = b'{"accepted":true,"ring_size":0}'
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)


class DurableFloor(asyncio.Protocol):
    """One connection: every request's body made durable, then answered."""

    def __init__(self, fd: int, end: list[int]) -> None:
        self.fd = fd
        self.end = end  # shared by the connections: where the next record goes
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        body = data.partition(b"\r\n\r\n")[2] + b"\n"
        offset = self.end[0]
        if offset + len(body) > PREALLOCATE_BYTES:
            offset = 0  # wrap around inside the allocated space: the file's size never changes
        os.pwrite(self.fd, body, offset)
        os.fdatasync(self.fd)
        self.end[0] = offset + len(body)
        assert self.transport is not None
        self.transport.write(RESPONSE)


async def serve(port: int, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, PREALLOCATE_BYTES)
    os.fsync(fd)
    end = [0]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DurableFloor(fd, end), "127.0.0.1", port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print("listening", flush=True)
    await stop.wait()
    server.close()
    os.close(fd)


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
