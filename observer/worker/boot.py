"""`python -m observer.worker.boot ARGS`: `prefect worker start ARGS` and its warm template, from
one warm-up.

Started apart, the worker and its template each import prefect (and the template polars and the
flows): two private copies, about 80 MB each. Here one single-threaded process imports it all
once and then forks: the child becomes the template, the parent goes on as `prefect worker start
ARGS`. Both keep the pages of what was imported before the fork shared (copy-on-write; the
garbage collector is told to leave those objects alone, see `template.warm_up`). The worker finds
its template through `TEMPLATE_VARIABLE`; should that template die, the worker starts a new one
the usual way (`client.WarmTemplate`), unshared.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

#: "FD:PID" of the template forked at boot, for the worker to adopt (read once, then removed).
TEMPLATE_VARIABLE = "OBSERVER_WARM_TEMPLATE"
#: What `prefect worker start` imports on its way to the worker (found by listing `sys.modules`).
WORKER_MODULES = ("prefect.cli", "prefect.cli.worker")


def worker_command(*worker_args: str) -> list[str]:
    """The command line of a warm worker: `prefect worker start` with these arguments."""
    return [sys.executable, "-m", "observer.worker.boot", *worker_args]


def project_directory() -> Path:
    """The checkout the deployments run in: where the template lives, so that its runs and
    checks find the flows it imported (`OBSERVER_PROJECT_DIR`, set by `observer up`)."""
    return Path(os.environ.get("OBSERVER_PROJECT_DIR") or Path.cwd())


def preload_modules() -> list[str]:
    """The flows' modules, imported once by the template."""
    from observer.catalog import FLOWS

    return sorted(entry.module for entry in FLOWS.values())


def main(worker_args: list[str]) -> None:
    from observer.worker.template import serve, warm_up

    os.chdir(project_directory())

    # The worker's own modules (its class, Prefect's command line) are imported before the fork
    # too: what the template does not use costs it nothing, and the worker then shares it.
    preloaded = warm_up([*preload_modules(), *WORKER_MODULES])
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        os._exit(serve(theirs, preloaded))
    theirs.close()
    os.environ[TEMPLATE_VARIABLE] = f"{ours.detach()}:{pid}"
    from prefect.cli import app

    sys.argv = ["prefect", "worker", "start", *worker_args]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
