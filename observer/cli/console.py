"""What `observer up` says on its console about runs: one line for each run that ends badly.

The children's own output goes to log files (`OBSERVER_DATA_DIR/_observer/logs/`), and a run's
full logs and traceback stay on its page in the UI. The console gets the one line that matters:
which deployment, which run, why, and where to look. The watcher asks the Prefect API every few
seconds for runs that ended Failed, Crashed or Cancelled since it last looked, over one kept-alive
connection (a new client each time would build a TLS context every look: most of an idle
supervisor's CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx

BAD_STATES = ("FAILED", "CRASHED", "CANCELLED")
MESSAGE_CHARS = 200


class RunWatcher:
    """Reports each run that ended badly once, as one line through `say`."""

    def __init__(self, api_url: str, work_pool: str, say: Callable[[str], None]) -> None:
        """Watches the runs of `work_pool` only: on a shared server, other hosts' are theirs."""
        self.api_url = api_url.rstrip("/")
        self.work_pool = work_pool
        self.ui_url = self.api_url.removesuffix("/api")
        self._say = say
        self._since = datetime.now(UTC)
        self._reported: set[str] = set()
        self._deployments: dict[str, str] = {}
        self._client = httpx.Client(timeout=5)

    def close(self) -> None:
        self._client.close()

    def check(self) -> int:
        """Look once; returns how many lines were said. Never raises for the API being away."""
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
        try:
            response = self._client.post(f"{self.api_url}/flow_runs/filter", json=query)
            response.raise_for_status()
            runs = response.json()
        except (httpx.HTTPError, ValueError):
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

    def line(self, run: dict[str, object]) -> str:
        """`deployment: run 'name' Failed: reason — URL`, on one line."""
        state = run.get("state") or {}
        assert isinstance(state, dict)
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
            try:
                response = self._client.get(f"{self.api_url}/deployments/{deployment_id}")
                response.raise_for_status()
                self._deployments[deployment_id] = response.json()["name"]
            except (httpx.HTTPError, ValueError, KeyError):
                return deployment_id
        return self._deployments[deployment_id]
