"""Leave a run's report on its Prefect run page: the artifacts the report renders for itself."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from observer import markdown
from observer.pipelines.report import RunReport


def publish(report: RunReport) -> None:
    """Create each artifact of the report (called inside a task, so they attach to the run); the
    UIs render descriptions as markdown, so each is escaped."""
    for artifact in report.artifacts():
        description = markdown.text(artifact.description)
        if artifact.table is not None:
            create_table_artifact(key=artifact.key, table=artifact.table, description=description)
        if artifact.markdown is not None:
            create_markdown_artifact(
                key=artifact.key, markdown=artifact.markdown, description=description
            )
