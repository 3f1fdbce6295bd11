"""Observer's own Prefect worker type: flow runs forked from a warm template, picked up promptly.

Registered with Prefect through the `prefect.collections` entry point (pyproject.toml, pointing at
`observer.worker.worker`), so `prefect worker start --pool observer --type observer-warm` finds it
like any integration's worker. This package itself imports nothing: the template process starts
from here and must stay light until it chooses what to import.

- `worker.py`: `ObserverWorker` (a `BaseWorker`), its job configuration and variables;
- `template.py`: the warm template process and the code its forked children run;
- `client.py`, `protocol.py`: how the worker talks to the template;
- `starter.py`: Prefect's `ProcessStarter` strategy that forks instead of spawning;
- `scheduling.py`: which runs start now, which wait, which late scheduled runs are skipped.
"""
