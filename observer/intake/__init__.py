"""The durable intake: every op enters Observer through the spool, fsync'd before anyone is told.

- `record_ops()` / `record_lines()` (`observer.intake.record`): synchronous, for flows and callers
  such as `observed()`;
- `Intake` (`observer.intake.group_commit`): the webhook's group-commit writer;
- `observer.intake.spool`: the spool itself; `observer.intake.checkpoint`: how far ingestion got.

Importing this package loads only the light synchronous door.
"""

from observer.intake.record import record_lines, record_ops

__all__ = ["record_lines", "record_ops"]
