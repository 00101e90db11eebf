"""The run's report, written as a stage and shown as Prefect artifacts.

The report stage (tasks/stages/report.py) is never cached: it describes this run, including
which steps were cached. The flow publishes it as markdown and table artifacts so a
run served entirely from the cache still shows in the UI what it delivered: the
markdown carries the plots inline (data: URIs), the table reads like report.md's, and
both say when the run was a smoke run.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from artifacts.stage import Progress, run_stage
from artifacts.store import ArtifactRef, ArtifactStore
from tasks.report.markdown import SMOKE_NOTE
from tasks.report.rows import readable_model_rows
from tasks.stages import report


def artifact_key(*words: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return "-".join(words).replace("_", "-").lower()


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def write_report(workload: str, stages: dict, evaluation: ArtifactRef, store: str, smoke: bool = False,
                 data_findings: list[dict] | None = None, decision: dict | None = None) -> ArtifactRef:
    """Never cached: the report describes this run, including which stages were cached and its promotion."""
    params = report.ReportParams(workload=workload, stages=stages, smoke=smoke, data_findings=data_findings or [],
                                 decision=decision or {})
    return run_stage(report.STAGE, params, {"evaluation": evaluation}, ArtifactStore(store), Progress(get_run_logger().info))


# A report.md image line: ![alt](file.png), the file beside report.md.
IMAGE_LINE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<file>[^()\s]+\.png)\)$")


def embed_images(markdown: str, folder: Path) -> str:
    """report.md with its plots inlined as data: URIs: the Prefect UI cannot reach the
    store's files (a folder on a worker, an S3 bucket), but it shows data:image/ images."""
    lines = []
    for line in markdown.splitlines():
        match = IMAGE_LINE.match(line.strip())
        if match:
            path = folder / match["file"]
            if path.parent != folder or not path.is_file():
                raise FileNotFoundError(f"report.md shows {match['file']!r}, which is not a file in the report folder {folder}")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            line = f"![{match['alt']}](data:image/png;base64,{data})"
        lines.append(line)
    return "\n".join(lines) + "\n"


def publish_report(workload: str, store: ArtifactStore, ref: ArtifactRef, smoke: bool = False) -> str:
    """The report as Prefect artifacts (markdown and a table); returns where its files are."""
    folder = store.open(ref)
    location = f"{store.root}/objects/{ref.digest}"
    body = embed_images((folder / "report.md").read_text(), folder) + (
        f"\nPlots (PNG) and this report: `{location}` (alias `{workload}/report`).\n"
    )
    note = f" ({SMOKE_NOTE})" if smoke else ""
    create_markdown_artifact(body, key=artifact_key(workload, "report"), description=f"{workload} run report{note}")
    rows = readable_model_rows(json.loads((folder / "models.json").read_text()))
    create_table_artifact(rows, key=artifact_key(workload, "models"),
                          description=f"accuracy, latency and size per model{note}")
    return location
