"""The worker's side of the warm template: start it, ask it to fork runs, hear their exits, restart it.

One `WarmTemplate` per worker. The template is a child process joined by a socket pair; when the
worker goes, the socket closes and the template exits. A worker started through
`observer.worker.boot` adopts the template forked at its boot (sharing its imports); otherwise, and
whenever the template dies, the worker starts a new one. Runs a dead template had forked carry on
(they are their own sessions) and are watched by pid until they end, with an unknown exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from observer.errors import TemplateUnavailable
from observer.worker import protocol
from observer.worker.boot import TEMPLATE_VARIABLE

#: What a run's process is reported to have returned when its template died before it did.
UNKNOWN_EXIT = 1
START_TIMEOUT = 180.0


class AdoptedProcess:
    """The template forked at boot, a child of this process: what `WarmTemplate` needs of it
    (`asyncio.subprocess.Process` gives the same for a template it started itself)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    async def wait(self) -> int:
        """Its exit status; asked once its socket has closed, so the wait is short."""
        while self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
            else:
                await asyncio.sleep(0.05)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def adopt_boot_template() -> tuple[AdoptedProcess, socket.socket] | None:
    """The template `observer.worker.boot` forked for this worker, if any (once only)."""
    offered = os.environ.pop(TEMPLATE_VARIABLE, None)
    if not offered:
        return None
    fd, pid = (int(part) for part in offered.split(":"))
    return AdoptedProcess(pid), socket.socket(fileno=fd)


class WarmTemplate:
    def __init__(self, *, cwd: Path, preload: list[str], logger: logging.Logger) -> None:
        self.cwd = cwd
        self.preload = preload
        self.logger = logger
        self.ready: protocol.Ready | None = None
        self.forks = 0
        self._process: asyncio.subprocess.Process | AdoptedProcess | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[protocol.Ready] | None = None
        self._forking: dict[str, asyncio.Future[protocol.Forked]] = {}
        self._checking: dict[str, asyncio.Future[protocol.Checked]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> WarmTemplate:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def start(self) -> protocol.Ready:
        """Adopt the boot's template or start one; wait until it has imported everything."""
        adopted = adopt_boot_template()
        if adopted is not None:
            self._process, ours = adopted
        else:
            self._process, ours = await self._spawn()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader, self._process))
        self.ready = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        if self.ready.threads != 1:
            self.logger.error(
                "the warm template has %d threads after its imports: it will refuse every run",
                self.ready.threads,
            )
        return self.ready

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, socket.socket]:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "observer.worker.template", "--control-fd"]
        command.append(str(theirs.fileno()))
        for module in self.preload:
            command += ["--preload", module]
        try:
            process = await asyncio.create_subprocess_exec(
                *command, cwd=self.cwd, pass_fds=(theirs.fileno(),)
            )
        finally:
            theirs.close()
        return process, ours

    async def fork(self, request: protocol.RunRequest) -> protocol.Forked:
        """Ask for a forked process running this flow run; return once it exists."""
        forked = await self._ask(request, self._forking)
        self.forks += 1
        return forked

    async def check(self, request: protocol.CheckRequest) -> protocol.Checked:
        """Whether the run would find nothing new, answered by the template without forking."""
        return await self._ask(request, self._checking)

    async def _ask(
        self,
        request: protocol.RunRequest | protocol.CheckRequest,
        waiting: dict[str, asyncio.Future[Any]],
    ) -> Any:
        """Send a request; its answer arrives through `waiting`, keyed by the flow run's id."""
        async with self._lock:
            if self._writer is None or self.ready is None:
                raise TemplateUnavailable("the warm template is not running (it is restarting)")
            answer = asyncio.get_running_loop().create_future()
            waiting[request.flow_run_id] = answer
            self._writer.write(protocol.encode(request))
            await self._writer.drain()
        return await answer

    async def wait(self, pid: int) -> int:
        """The exit code of a forked run's process (minus the signal that killed it)."""
        return await self._exits[pid]

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._process is not None and self._process.returncode is None:
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader_task, 5)

    async def _read(
        self, reader: asyncio.StreamReader, process: asyncio.subprocess.Process | AdoptedProcess
    ) -> None:
        while line := await reader.readline():
            reply = protocol.decode_reply(line)
            if isinstance(reply, protocol.Ready):
                assert self._ready is not None
                self._ready.set_result(reply)
            elif isinstance(reply, protocol.Forked):
                self._exits[reply.pid] = asyncio.get_running_loop().create_future()
                self._forking.pop(reply.flow_run_id).set_result(reply)
            elif isinstance(reply, protocol.Checked):
                self._checking.pop(reply.flow_run_id).set_result(reply)
            elif isinstance(reply, protocol.Refused):
                self._forking.pop(reply.flow_run_id).set_exception(
                    TemplateUnavailable(f"the warm template refused to fork: {reply.reason}")
                )
            else:
                self._exits.pop(reply.pid).set_result(reply.returncode)
        await process.wait()
        self._template_gone(process.returncode)
        if not self._closing:
            self.logger.error(
                "the warm template exited (status %s); starting a new one", process.returncode
            )
            await self._restart()

    def _template_gone(self, returncode: int | None) -> None:
        self._writer = None
        self.ready = None
        for answer in self._forking.values():
            answer.set_exception(TemplateUnavailable("the warm template exited while forking"))
        self._forking.clear()
        for check in self._checking.values():
            check.set_exception(TemplateUnavailable("the warm template exited while checking"))
        self._checking.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                TemplateUnavailable(f"the warm template exited during start (status {returncode})")
            )
        orphans, self._exits = self._exits, {}
        for pid, exit_code in orphans.items():
            watcher = asyncio.create_task(_watch_orphan(pid, exit_code))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)

    async def _restart(self) -> None:
        delay = 1.0
        while not self._closing:
            try:
                await self.start()
                return
            except (OSError, TimeoutError, TemplateUnavailable) as exc:
                self.logger.error("could not restart the warm template: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


async def _watch_orphan(pid: int, exit_code: asyncio.Future[int]) -> None:
    """A run whose template died: its status cannot be read any more, only its end seen."""
    while _alive(pid):
        await asyncio.sleep(1.0)
    exit_code.set_result(UNKNOWN_EXIT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
