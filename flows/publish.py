"""The run's report, written as a stage and shown as Prefect artifacts.

The report stage (tasks/report.py) is never cached: it describes this run, including
which steps were cached. The flow publishes it as markdown and table artifacts so a
run served entirely from the cache still shows in the UI what it delivered.
"""

from __future__ import annotations

import json

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from artifacts.stage import Progress, run_stage
from artifacts.store import ArtifactRef, ArtifactStore
from tasks import report


def artifact_key(*words: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return "-".join(words).replace("_", "-").lower()


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def write_report(workload: str, stages: dict, evaluation: ArtifactRef, store: str, smoke: bool = False) -> ArtifactRef:
    """Never cached: the report describes this run, including which stages were cached."""
    params = report.ReportParams(workload=workload, stages=stages, smoke=smoke)
    return run_stage(report.STAGE, params, {"evaluation": evaluation}, ArtifactStore(store), Progress(get_run_logger().info))


def publish_report(workload: str, store: ArtifactStore, ref: ArtifactRef, smoke: bool = False) -> str:
    """The report as Prefect artifacts (markdown and a table); returns where its files are."""
    folder = store.open(ref)
    location = f"{store.root}/objects/{ref.digest}"
    body = (folder / "report.md").read_text()
    body = "\n".join(line for line in body.splitlines() if not line.startswith("![")) + (
        f"\n\nPlots (PNG) and this report: `{location}` (alias `{workload}/report`).\n"
    )
    create_markdown_artifact(body, key=artifact_key(workload, "report"), description=f"{workload} run report")
    rows = json.loads((folder / "models.json").read_text())
    table = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    create_table_artifact(table, key=artifact_key(workload, "models"), description="accuracy, latency and size per model")
    return location
