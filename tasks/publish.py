"""Leave a run's report on its Prefect run page: the artifacts the report renders for itself."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from observer.pipelines.report import RunReport


def publish(report: RunReport) -> None:
    """Create each artifact of the report (called inside a task, so they attach to the run)."""
    for artifact in report.artifacts():
        if artifact.table is not None:
            create_table_artifact(
                key=artifact.key, table=artifact.table, description=artifact.description
            )
        if artifact.markdown is not None:
            create_markdown_artifact(
                key=artifact.key, markdown=artifact.markdown, description=artifact.description
            )
