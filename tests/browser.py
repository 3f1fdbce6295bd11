"""A real browser for tests: Debian's headless Chromium, driven over the DevTools protocol.

`Browser.start()` runs `chromium` with a fresh profile and the flags a closed network needs (no
background connections, no component updates, no sync, no QUIC), on loopback only; `page` then
navigates, evaluates JavaScript and takes screenshots through one websocket (the `websockets`
package Prefect brings). Nothing is downloaded. Where there is no Chromium, `find_chromium` says why,
and the tests that need it are skipped with that reason (`make test` installs it as root on Debian).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def find_chromium() -> tuple[str | None, str]:
    """The Chromium binary, or None and why not."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path, ""
    return None, (
        "Chromium is not installed: `make test` installs Debian's `chromium` package when run as"
        " root with apt-get (`make chromium`); elsewhere install it to run this test"
    )


class Page:
    """One tab, over its DevTools websocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command; return its result (events that arrive meanwhile are dropped)."""
        number = next(self._ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Until `expression` is truthy in the page; returns its value."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):  # the page is between two documents
                value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(0.25)
        raise AssertionError(f"{expression!r} still {value!r} after {timeout:.0f} s")

    def screenshot(self, path: Path) -> Path:
        """The viewport as a PNG (tall from the start: a resize to capture more would make the
        page lay itself out again, and lazy parts show their placeholder meanwhile)."""
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


class Browser:
    """A headless Chromium of its own (own profile, own process group), stopped by `close()`."""

    def __init__(self, binary: str, width: int = 1280, height: int = 2400) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="observer-chromium-"))
        self.process = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        self.port = self._port()
        self.size = (width, height)
        self._socket: ClientConnection | None = None

    def _port(self, timeout: float = 30) -> int:
        """The DevTools port Chromium chose, from the file it writes into its profile."""
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.process.returncode})")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(marker.read_text().splitlines()[0])
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def page(self) -> Page:
        targets = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=10).json()
        tab = next(t for t in targets if t["type"] == "page")
        self._socket = connect(tab["webSocketDebuggerUrl"], max_size=64 * 2**20)
        page = Page(self._socket)
        page.call("Page.enable")
        width, height = self.size
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)
