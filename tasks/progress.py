"""A pipeline's progress on its Prefect run page: the ring on the task and the run's log.

`RunProgress()` is the `on_progress` callback a task hands to a pipeline (`observer.progress`):
the first report creates a progress artifact on the task run (the run graph draws it as a ring on
the task's node, the task's Artifacts show "Progress: N%"), later ones update it in place, and each
report is also a line in the run's log (how far, rate, time left). Showing progress is never worth
failing the run for: an API error is logged and the work goes on.
"""

from __future__ import annotations

from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from observer import markdown
from observer.progress import ProgressUpdate


class RunProgress:
    """Reports of one long step, as one progress artifact and log lines."""

    def __init__(self) -> None:
        self.artifact_id: UUID | None = None

    def __call__(self, update: ProgressUpdate) -> None:
        line = update.line()
        logger = get_run_logger()
        logger.info(line)
        percent = round(update.percent, 1)
        description = markdown.text(line)  # the UIs render it as markdown
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(percent, description=description)
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
        except httpx.HTTPError as exc:
            logger.warning("progress not shown on the run page: %s", exc)
