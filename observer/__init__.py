"""Observer: watches what agents and scenario runners do, learns from it, feeds the lessons back.

The public surface, for agents and scripts:

- `observed()` / `observed_sync()`: call the gateway and have the call recorded as an op;
- `record_ops()`: append ops to the durable spool yourself (ingestion moves them to ops.jsonl);
- `Op`: one operation outcome, and its byte-compatible ops.jsonl line;
- `Settings` / `load_settings()`: the configuration, from the environment;
- `ObserverError` and its subclasses (`observer.errors`): what Observer raises on purpose.

Everything else is internal. Importing the package stays light (no Prefect, no polars) because
agents import it on their own start-up path.
"""

from observer.errors import (
    CommandError,
    EventError,
    IntakeError,
    NotDelivered,
    ObserverError,
    Overloaded,
    SettingsError,
    UpstreamError,
    WriteFailed,
)
from observer.intake import record_ops
from observer.observed import observed, observed_sync
from observer.ops import Op
from observer.settings import Settings, load_settings

__all__ = [
    "CommandError",
    "EventError",
    "IntakeError",
    "NotDelivered",
    "ObserverError",
    "Op",
    "Overloaded",
    "Settings",
    "SettingsError",
    "UpstreamError",
    "WriteFailed",
    "load_settings",
    "observed",
    "observed_sync",
    "record_ops",
]
