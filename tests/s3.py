"""An S3 server of the test run's own on 127.0.0.1 (moto's server mode, with conditional puts):
the history table's object storage, with no network beyond loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import httpx


class S3Server:
    """`python -m moto.server` on a free loopback port; `bucket()` makes a bucket and `env` is
    what a process needs to reach it through the standard AWS variables."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the S3 server did not start") from None
                time.sleep(0.1)
        self.env = {
            "AWS_ACCESS_KEY_ID": "observer-test",
            "AWS_SECRET_ACCESS_KEY": "observer-test",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_CONDITIONAL_PUT": "etag",
        }

    def bucket(self) -> str:
        name = f"observer-{uuid.uuid4().hex[:12]}"
        httpx.put(f"{self.url}/{name}", timeout=10).raise_for_status()
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
