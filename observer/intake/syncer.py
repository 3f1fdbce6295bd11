"""fsync in a child process, so the webhook's event loop keeps serving while the disk flushes.

Group commit on the event loop alone stalls every connection for each fsync (0.2–0.3 ms here);
a thread does not help, because once its fsync returns it waits for the GIL that the busy loop
holds. A child process has its own interpreter: the loop writes a batch, asks the child to fsync
the segment, and goes on parsing the next requests; the answer arrives as a readable pipe. A flush
covers the file whichever descriptor wrote to it, so the child's own descriptor is enough. (The
child's flush is an `fdatasync`: the spool writes into space allocated ahead, see
`observer.intake.spool`.)

Protocol: the parent writes a segment's path and a newline on the child's stdin for each flush it
wants; the child flushes the newest path it has read and answers `errno covered` and a newline:
the errno (0 on success) and how many of the requests it read that flush answers. Requests that
queued while a flush ran are covered by the next one, which sees everything written before it
starts. It exits when its stdin closes, so it never outlives the webhook, even after a `kill -9`.

The child is `syncer_child.py` next to this module, run by path with `python -I -S`: no site, no package
import, so it costs a few MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from observer.intake.spool import PREALLOCATE_BYTES

log = logging.getLogger("observer.intake.syncer")

STOP_TIMEOUT_S = 5.0
CHILD = Path(__file__).with_name("syncer_child.py")


class Syncer:
    """The parent's side: ask for an fsync, get `on_synced(errno, covered)` on the event loop
    (`covered`: how many of the requests, oldest first, that flush answers).

    If the child dies, `on_lost()` runs once and the syncer stays unusable (the caller fsyncs on
    its own from then on).
    """

    def __init__(self, on_synced: Callable[[int, int], None], on_lost: Callable[[], None]) -> None:
        self._on_synced = on_synced
        self._on_lost = on_lost
        self._process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._replies = b""
        self._asked_path: Path | None = None
        self._asked = b""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the child; raises OSError if it cannot be started."""
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(CHILD), str(PREALLOCATE_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        loop.add_reader(process.stdout.fileno(), self._read_replies)
        self._process, self._loop = process, loop

    def request(self, path: Path) -> None:
        """Ask for one fsync of `path` (the answer comes through `on_synced`)."""
        assert self._process is not None and self._process.stdin is not None
        if path is not self._asked_path:  # the same segment's path, again and again
            self._asked_path, self._asked = path, os.fsencode(path) + b"\n"
        try:
            self._process.stdin.write(self._asked)
        except OSError:
            self._lose()

    def stop(self) -> None:
        """Close the child's stdin (it exits) and wait for it; kill it if it does not go."""
        process, self._process = self._process, None
        if process is None:
            return
        self._forget(process)
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()

    def _read_replies(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            data = os.read(self._process.stdout.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lose()
            return
        self._replies += data
        *complete, self._replies = self._replies.split(b"\n")
        for reply in complete:
            error, covered = reply.split(b" ")
            self._on_synced(int(error), int(covered))

    def _lose(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self._forget(process)
        process.kill()
        process.wait()
        log.warning(
            "the fsync helper process stopped (exit %s); fsyncing inline", process.returncode
        )
        self._on_lost()

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        if self._loop is not None and process.stdout is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(process.stdout.fileno())
