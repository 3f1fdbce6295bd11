"""What `observer up` is once everything has started: its children's keeper and its console.

`observer up` starts the product with the whole package at hand (settings, checks, `prefect
deploy`), then replaces itself (`exec`, same pid, same children) with this module run as a
script on the standard library alone (`python -I -S console.py PLAN`): all day it only watches,
so it should weigh what watching needs (20 MB RSS, not the 58 MB of the start-up's imports).
`start_console` does the hand-over, `main` is the other side; `keep` is the loop both run.

The loop notices a child that stopped (then says which, with the end of its log, and stops the
rest: exit 1), stops the children in reverse order on Ctrl-C or SIGTERM, each with the signal it
obeys (a Prefect 3.9 worker keeps going after its first SIGINT and kills itself at the second, so
it gets SIGINT twice), and caps their logs. The console gets one line per run that ends badly:
the watcher asks the Prefect API every `WATCH_SECONDS` for runs that ended Failed, Crashed or
Cancelled since it last looked, over one kept-alive connection. A run's full logs and traceback
stay on its page in the UI. It also reads the gateway's outage record (`state/gateway.json`,
kept by the runs that post to it) and says one line when the gateway goes down, one when it is
back, however many runs wait meanwhile.

Only the standard library may be imported here.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BAD_STATES = ("FAILED", "CRASHED", "CANCELLED")
MESSAGE_CHARS = 200
# How often the watcher asks the API for runs that ended badly (and logs are capped): each look
# is a query the Prefect server pays for, all day; a failure's line can wait 15 s.
WATCH_SECONDS = 15.0
LOG_BYTES = 10 * 1024 * 1024  # per log file; one older copy is kept
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def say(message: str) -> None:
    print(f"observer: {message}", flush=True)


# ── the children ────────────────────────────────────────────────────────────────────────────────


@dataclass
class Child:
    """A process `observer up` started (and whose parent it stays, across the exec)."""

    name: str
    pid: int
    stop_signal: int
    log: str
    repeat_after: float | None = None  # send the stop signal again after this many seconds
    returncode: int | None = field(default=None, compare=False)
    # The `subprocess.Popen` that started it, held so that `subprocess` never reaps it behind
    # this object's back (it reaps the processes of Popen objects that were dropped).
    handle: object = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """What the console needs to go on keeping it after the exec."""
        return {
            "name": self.name,
            "pid": self.pid,
            "stop_signal": self.stop_signal,
            "log": self.log,
            "repeat_after": self.repeat_after,
        }

    def last_lines(self, count: int = 20) -> str:
        """The end of what it printed, to show when it stops unexpectedly."""
        try:
            text = Path(self.log).read_bytes()[-16384:].decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-count:])

    def alive(self) -> bool:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is None

    def wait(self, timeout: float) -> bool:
        """Whether it ended within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        self.signal(self.stop_signal)
        if self.repeat_after is not None and not self.wait(self.repeat_after):
            self.signal(self.stop_signal)
        if not self.wait(timeout):
            self.signal(signal.SIGKILL)
            self.wait(10)

    def signal(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, number)


def old_copy(log: str) -> str:
    """Where a log's one older copy is kept."""
    return log + ".1"


def cap_log(log: str) -> None:
    """Bound a log while its process writes it: past LOG_BYTES, keep a copy (`old_copy`) and
    start the file again (the writer appends, so it goes on at the new end)."""
    try:
        if os.stat(log).st_size <= LOG_BYTES:
            return
        shutil.copyfile(log, old_copy(log))
        os.truncate(log, 0)
    except OSError:
        pass


def keep(children: list[Child], watcher: RunWatcher, stopping: Callable[[], bool]) -> int:
    """Watch until asked to stop (0) or until a child stops on its own (1, saying which); then
    stop the children, last started first."""
    code = 0
    try:
        next_look = 0.0
        while not stopping():
            if dead := [child for child in children if not child.alive()]:
                print(
                    f"observer: {', '.join(c.name for c in dead)} stopped unexpectedly; the end"
                    f" of its log ({dead[0].log}):\n{dead[0].last_lines()}",
                    file=sys.stderr,
                    flush=True,
                )
                code = 1
                break
            if time.monotonic() >= next_look:
                orphans(children)  # reaps a run that ended here, its worker gone before it
                watcher.check()
                for child in children:
                    cap_log(child.log)
                next_look = time.monotonic() + WATCH_SECONDS
            time.sleep(0.5)
    finally:
        watcher.close()
        stop_all(children)
    return code


def stop_all(children: list[Child]) -> None:
    """Stop the children, last started first; a second Ctrl-C does not cut that short. After
    each, the flow runs a stopped worker left are given time to end (`finish_runs`): the worker
    stops before the Prefect server, which can then still record their states."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for child in reversed(children):
        say(f"stopping {child.name}")
        child.stop()
        finish_runs(children)


# ── flow runs left by a stopped worker ──────────────────────────────────────────────────────────
# A flow run is a process of its own (forked by the worker's template, leading its own session),
# and it outlives its worker: stopped with everything else, it would go on trying to report its
# end to a server that is gone (about a minute) after `observer up` has returned. This process is
# made the reaper of its descendants' orphans (`adopt_orphans`), so those runs become its own
# children once the worker and its template are gone: it can wait for them, and stop them.

PR_SET_CHILD_SUBREAPER = 36
RUN_GRACE_SECONDS = 20.0
RUN_STOP_SECONDS = 5.0


def adopt_orphans() -> None:
    """Become the reaper of this process's descendants' orphans (Linux; kept across `exec`). Where
    the kernel refuses, runs left by a stopped worker are simply not waited for."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def finish_runs(children: list[Child]) -> None:
    """Wait up to RUN_GRACE_SECONDS for the processes under this one that none of `children`
    leads (flow runs whose worker has stopped); then stop those still running, each with its
    session (SIGTERM, then SIGKILL)."""
    left = orphans(children)
    if not left:
        return
    say(f"waiting up to {RUN_GRACE_SECONDS:.0f} s for {len(left)} flow run process(es) to end")
    for grace, stop_signal in (
        (RUN_GRACE_SECONDS, None),
        (RUN_STOP_SECONDS, signal.SIGTERM),
        (RUN_STOP_SECONDS, signal.SIGKILL),
    ):
        if stop_signal is not None:
            say(f"sending {stop_signal.name} to {len(left)} flow run process(es)")
            for pid in left:
                _signal_session(pid, stop_signal)
        deadline = time.monotonic() + grace
        while (left := orphans(children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not left:
            return


def orphans(children: list[Child]) -> list[int]:
    """The live processes under this one outside the trees of `children`; those of them that are
    this process's own children and have ended are reaped on the way."""
    known = {child.pid for child in children}
    found: list[int] = []
    for pid in process_children(os.getpid()):
        if pid not in known:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            found += [pid, *descendants(pid)]
    return [pid for pid in found if running(pid)]


# ── processes, from /proc ───────────────────────────────────────────────────────────────────────


def process_children(pid: int) -> list[int]:
    """The processes `pid` started, whichever of its threads started them."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    return [d for child in process_children(pid) for d in (child, *descendants(child))]


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal_session(pid: int, number: int) -> None:
    """Signal a run and what it started (it leads its own session and process group)."""
    with contextlib.suppress(OSError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, number)
            return
    with contextlib.suppress(OSError):
        os.kill(pid, number)


# ── the hand-over ───────────────────────────────────────────────────────────────────────────────


def start_console(
    children: list[Child],
    api_url: str,
    work_pool: str,
    gateway_state: str,
    stopping: Callable[[], bool],
) -> int:
    """Become the light console (this process, exec'd), unless a stop was asked for during the
    start-up. Stop signals are held from that last look across the exec, so one sent meanwhile
    is handled there. Should the exec fail, keep watching from here."""
    plan = {
        "api_url": api_url,
        "work_pool": work_pool,
        "gateway_state": gateway_state,
        "children": [c.to_json() for c in children],
    }
    sys.stdout.flush()
    sys.stderr.flush()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    if stopping():
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        stop_all(children)
        return 0
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-S", __file__, json.dumps(plan)])
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        say(f"could not start the light console ({exc}); watching from here")
    return run(children, api_url, work_pool, gateway_state)


def run(children: list[Child], api_url: str, work_pool: str, gateway_state: str) -> int:
    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    for number in STOP_SIGNALS:
        signal.signal(number, request_stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    watcher = RunWatcher(api_url, work_pool, say, GatewayWatcher(gateway_state, say))
    return keep(children, watcher, lambda: stop_requested)


def main(argv: list[str]) -> int:
    plan = json.loads(argv[0])
    children = [Child(**child) for child in plan["children"]]
    return run(children, plan["api_url"], plan["work_pool"], plan["gateway_state"])


# ── runs that end badly ─────────────────────────────────────────────────────────────────────────


class RunWatcher:
    """Reports each run that ended badly once, as one line through `say`."""

    def __init__(
        self,
        api_url: str,
        work_pool: str,
        say: Callable[[str], None],
        gateway: GatewayWatcher | None = None,
    ) -> None:
        """Watches the runs of `work_pool` only: on a shared server, other hosts' are theirs."""
        self.gateway = gateway
        self.api_url = api_url.rstrip("/")
        self.work_pool = work_pool
        self.ui_url = self.api_url.removesuffix("/api")
        self._say = say
        self._since = datetime.now(UTC)
        self._reported: set[str] = set()
        self._deployments: dict[str, str] = {}
        self._api = urllib.parse.urlsplit(self.api_url)
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def check(self) -> int:
        """Look once; returns how many lines were said. Never raises for the API being away."""
        said = self.gateway.check() if self.gateway is not None else 0
        return said + self._check_runs()

    def _check_runs(self) -> int:
        until = datetime.now(UTC)
        query = {
            "flow_runs": {
                "state": {"type": {"any_": list(BAD_STATES)}},
                # End times are the server's: overlap a little so a run that ended as we looked
                # is not missed (ids already reported are skipped).
                "end_time": {"after_": (self._since - timedelta(seconds=30)).isoformat()},
            },
            "work_pools": {"name": {"any_": [self.work_pool]}},
            "sort": "END_TIME_DESC",
            "limit": 50,
        }
        runs = self._call("POST", "/flow_runs/filter", query)
        if not isinstance(runs, list):
            return 0
        said = 0
        for run in reversed(runs):
            if run["id"] in self._reported:
                continue
            self._reported.add(run["id"])
            self._say(self.line(run))
            said += 1
        self._since = until
        if len(self._reported) > 10_000:
            self._reported = {run["id"] for run in runs}
        return said

    def line(self, run: dict[str, Any]) -> str:
        """`deployment: run 'name' Failed: reason — URL`, on one line."""
        state = run.get("state") or {}
        message = " ".join(str(state.get("message") or "no message").split())
        if len(message) > MESSAGE_CHARS:
            message = message[: MESSAGE_CHARS - 1] + "…"
        deployment = self._deployment_name(run.get("deployment_id"))
        url = f"{self.ui_url}/runs/flow-run/{run['id']}"
        return f"{deployment}: run {run.get('name')!r} {state.get('name', '?')}: {message} — {url}"

    def _deployment_name(self, deployment_id: object) -> str:
        if not isinstance(deployment_id, str):
            return "(no deployment)"
        if deployment_id not in self._deployments:
            found = self._call("GET", f"/deployments/{deployment_id}")
            if not isinstance(found, dict) or not isinstance(found.get("name"), str):
                return deployment_id
            self._deployments[deployment_id] = found["name"]
        return self._deployments[deployment_id]

    def _call(self, method: str, path: str, body: object = None) -> Any:
        """The API's JSON answer, or None when it is away or answers anything but 2xx JSON (the
        connection is then dropped and made again at the next call)."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        for _attempt in range(2):  # a kept-alive connection the server closed: once more
            try:
                connection = self._connection or self._connect()
                connection.request(method, self._api.path + path, payload, headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                continue
            if not 200 <= response.status < 300:
                return None
            try:
                return json.loads(data)
            except ValueError:
                return None
        return None

    def _connect(self) -> http.client.HTTPConnection:
        kind = (
            http.client.HTTPSConnection
            if self._api.scheme == "https"
            else http.client.HTTPConnection
        )
        self._connection = kind(self._api.netloc, timeout=5)
        return self._connection


# ── the gateway's outages ───────────────────────────────────────────────────────────────────────


class GatewayWatcher:
    """Says one line when the gateway goes down and one when it is back, from the outage record
    the runs that post to it keep (`observer.upstream.GatewayOutage`, read here as plain JSON)."""

    def __init__(self, path: str, say: Callable[[str], None]) -> None:
        self.path = Path(path)
        self._say = say
        self._seen: int | None = None  # outages already said (None: not looked yet)
        self._down = False  # an outage was said and its end not yet

    def check(self) -> int:
        """Look once; returns how many lines were said."""
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return 0
        if not isinstance(record, dict):
            return 0
        outages = record.get("outages") if isinstance(record.get("outages"), int) else 0
        down_since = record.get("down_since")
        said = 0
        if self._seen is None:  # an outage over before this console started is not news
            self._seen = outages - 1 if down_since else outages
        if outages > self._seen:
            self._seen = outages
            if self._down:  # over and begun again between two looks
                self._say(f"gateway: back at {record.get('back_at') or '?'}")
                said += 1
            self._say(
                f"gateway: down since {down_since or record.get('back_at') or '?'}"
                f" ({' '.join(str(record.get('last_error') or '?').split())[:MESSAGE_CHARS]});"
                " scheduled runs that post to it wait, with a back-off, and runs made by hand"
                " still try; nothing is lost"
            )
            self._down = True
            said += 1
        if self._down and not down_since:
            self._say(
                f"gateway: back at {record.get('back_at') or '?'}; the next runs deliver what"
                " waited"
            )
            self._down = False
            said += 1
        return said


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
