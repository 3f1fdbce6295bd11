"""The warm template: imports prefect, polars and the flows once, then forks one process per run.

`python -m observer.worker.template --control-fd N` is started by the worker (`ObserverWorker`),
once. It imports everything a flow run needs (about 4 s of CPU that every run used to pay twice),
starts no thread and no event loop, and then only waits on its control socket. For each
`RunRequest` it checks that it is still single-threaded (Python threads and the kernel's task list
both say 1) and forks: the child becomes the run's process (own session, the job's environment and
working directory) and runs the flow run through Prefect's engine, the way `python -m
prefect.flow_engine ENTRYPOINT` does; the template answers `Forked` with the pid, reaps the child
and reports its exit. It refuses to fork when it finds another thread, because a child forked from
a multi-threaded process can inherit a lock that no thread will ever release.

The template exits when the control socket closes (its worker is gone), so it never outlives it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import importlib
import os
import random
import selectors
import signal
import socket
import ssl
import sys
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import NoReturn
from uuid import UUID

from observer.worker import protocol

# polars' allocator (jemalloc) starts background threads unless told not to; set before import.
_JEMALLOC = "background_thread:false"
#: What a flow run imports besides the flows' own modules (found by listing `sys.modules` after a
#: run): importing them here saves every run the work, compiling them included where no bytecode
#: cache is written.
ENGINE_MODULES = (
    "prefect",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.concurrency.sync",
    "prefect.concurrency.services",
    "prefect._internal.observers",
    "prefect._internal.pytz",
    "anyio._backends._asyncio",
    "prefect._internal.states",
    "prefect.utilities.visualization",
    "rich._emoji_codes",
    "encodings.idna",
    "polars",
)


def share_tls_contexts() -> None:
    """Make `ssl.create_default_context` hand out one context per set of arguments.

    Every Prefect client a run creates builds its own default SSL context, and each one parses
    the whole CA bundle: six per run, about 40% of a quiet run's CPU in its process, for an API
    that is often plain HTTP. A context is safe to share between clients; built here, once, in
    the template, every forked run inherits it ready.
    """
    create = ssl.create_default_context

    @functools.cache
    def shared(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        return create(purpose, cafile=cafile, capath=capath, cadata=cadata)

    ssl.create_default_context = shared  # type: ignore[assignment]


def thread_count() -> int:
    """Threads of this process as the kernel sees them (native threads included)."""
    return len(os.listdir("/proc/self/task"))


def preload(modules: Iterable[str]) -> list[str]:
    """Import what every run needs; a module that fails to import is left to the run to report."""
    os.environ["_RJEM_MALLOC_CONF"] = _JEMALLOC
    loaded = []
    for name in (*ENGINE_MODULES, *modules):
        try:
            importlib.import_module(name)
        except Exception as exc:
            print(f"observer template: could not preload {name}: {exc}", file=sys.stderr)
        else:
            loaded.append(name)
    return loaded


class Template:
    """The fork loop. `serve()` returns `None` in the template when its worker is gone, and the
    `RunRequest` in a freshly forked child, which then runs it (`run_in_child`)."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self._buffer = b""
        self._children: set[int] = set()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def announce(self, preloaded: list[str]) -> None:
        self._send(protocol.Ready(pid=os.getpid(), threads=thread_count(), preloaded=preloaded))

    def serve(self) -> protocol.RunRequest | None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when this ends
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_write)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(self._wake_read, selectors.EVENT_READ, "child")
        while True:
            for key, _ in selector.select():
                if key.data == "child":
                    os.read(self._wake_read, 512)
                    self._reap()
                    continue
                try:
                    data = self.control.recv(65536)
                except ConnectionError:
                    data = b""
                if not data:  # the worker is gone: so is its template
                    return None
                self._buffer += data
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    request = protocol.decode_request(line)
                    if isinstance(request, protocol.CheckRequest):
                        self._send(check_in_template(request))
                    elif self._fork(request) == 0:
                        selector.close()
                        return request

    def _fork(self, request: protocol.RunRequest) -> int | None:
        threads, python_threads = thread_count(), threading.active_count()
        if threads != 1 or python_threads != 1:
            reason = (
                f"the template has {threads} kernel thread(s) and {python_threads} Python"
                " thread(s); forking it is only safe with one"
            )
            self._send(
                protocol.Refused(flow_run_id=request.flow_run_id, reason=reason, threads=threads)
            )
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_child()
            return 0
        self._children.add(pid)
        self._send(protocol.Forked(flow_run_id=request.flow_run_id, pid=pid, threads=threads))
        return pid

    def _become_child(self) -> None:
        """Drop everything of the template: its socket, its signal set-up; lead a new session so
        that a cancellation's signal reaches the run and whatever it starts, and nothing else."""
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_DFL)
        self.control.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        os.setsid()
        random.seed()

    def _reap(self) -> None:
        for pid in list(self._children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._children.discard(pid)
                self._send(protocol.Exited(pid=pid, returncode=_returncode(status)))

    def _send(
        self,
        message: protocol.Ready
        | protocol.Forked
        | protocol.Refused
        | protocol.Checked
        | protocol.Exited,
    ) -> None:
        with contextlib.suppress(OSError):  # the worker is gone; the next read sees it
            self.control.sendall(protocol.encode(message))


def check_in_template(request: protocol.CheckRequest) -> protocol.Checked:
    """The flow's own nothing-new check (a stat or two and a small state file: no thread, no
    event loop), run here under the run's environment and working directory, which are then put
    back. A run of another checkout, or a check that fails, is answered "cannot tell": the run
    then starts as usual and decides for itself."""
    answer = protocol.Checked(flow_run_id=request.flow_run_id)
    if os.path.realpath(request.cwd) != os.path.realpath(os.getcwd()):
        answer.error = f"the run starts in {request.cwd}, not in this template's checkout"
        return answer
    from observer.catalog import FLOWS

    environment = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(request.env)
        entry = FLOWS[request.flow]
        answer.nothing_new = entry.nothing_new(request.parameters)
        if answer.nothing_new is not None:
            answer.run_name = entry.run_name(request.parameters)
    except Exception as exc:
        answer.error = f"{type(exc).__name__}: {exc}"
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return answer


def _returncode(status: int) -> int:
    """As `subprocess`: the exit code, or minus the signal that ended the process."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run_in_child(request: protocol.RunRequest) -> int:
    """In the forked child: take the job's environment and working directory, then run the flow
    run as `python -m prefect.flow_engine ENTRYPOINT` would (its exits and signals included)."""
    if os.path.realpath(request.cwd) != os.path.realpath(os.getcwd()):
        forget_modules_under(os.getcwd())  # another checkout: import its code, not the preloaded
    os.chdir(request.cwd)
    settings_before = _prefect_settings(os.environ)
    os.environ.clear()
    os.environ.update(request.env)
    from prefect.context import refresh_global_settings_context
    from prefect.flow_engine import _run_flow_from_runtime_entrypoint
    from prefect.logging.configuration import setup_logging
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    settings_now = _prefect_settings(os.environ)
    if settings_now != settings_before:  # Prefect read its settings from the template's env
        refresh_global_settings_context()
        if _logging(settings_now) != _logging(settings_before):
            setup_logging()
    # No heartbeat thread and events: Prefect uses heartbeats to notice runs whose process died
    # unseen, and this run's worker is its process's grandparent, which sees its exit (Crashed).
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        _run_flow_from_runtime_entrypoint(UUID(request.flow_run_id), request.entrypoint)
    return 0


def _prefect_settings(env: Mapping[str, str]) -> dict[str, str]:
    """Prefect's settings variables (`PREFECT__…` ones are a run's identity, not settings)."""
    return {
        k: v for k, v in env.items() if k.startswith("PREFECT_") and not k.startswith("PREFECT__")
    }


def _logging(settings: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in settings.items() if k.startswith("PREFECT_LOGGING_")}


def forget_modules_under(directory: str) -> None:
    root = os.path.join(os.path.realpath(directory), "")
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and os.path.realpath(path).startswith(root):
            del sys.modules[name]


def warm_up(modules: Iterable[str]) -> list[str]:
    """Everything done once, before any fork: the shared TLS contexts and the imports. What was
    imported is then kept out of the garbage collector's walks: a collection touching those
    objects would copy every page it touches into each forked process."""
    share_tls_contexts()
    preloaded = preload(modules)
    gc.collect()
    gc.freeze()
    return preloaded


def serve(control: socket.socket, preloaded: list[str]) -> int:
    """Be the template on `control` until the worker goes (then 0); in a forked child, run its
    flow run and exit (this never returns there)."""
    template = Template(control)
    template.announce(preloaded)
    request = template.serve()
    if request is None:
        return 0
    try:
        code = run_in_child(request)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()  # as the interpreter would for an uncaught exception
        code = 1
    exit_without_teardown(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE")
    args = parser.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    return serve(control, warm_up(args.preload))


def exit_without_teardown(code: int) -> NoReturn:
    """End a forked run the way the interpreter's exit starts (threads' exit hooks, where Prefect
    drains its log and event queues, then atexit), but without tearing the interpreter down:
    that would touch every object inherited from the template, copying its pages into the child
    (about 0.7 CPU-s per run, measured)."""
    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls first
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
