"""Stage `report`: what one run produced, as report.md and PNG plots.

It reads the evaluation (quality, latency and size of every model variant) and the
run's own stage table (which stages were computed or cached, and how long each
took). The stage table belongs to the run, not to the models, so every run writes
a new report; the flow points the alias `<workload>/report` at the newest one.

What it holds is built by the helpers in tasks/report/: the rows (rows.py), the
markdown (markdown.py) and the plots (plots.py); a smoke run says so in the title.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.formats import RUN_REPORT, read_evaluation
from tasks.report.markdown import markdown_report
from tasks.report.plots import plot_accuracy_latency, plot_confusion, plot_per_class_f1, plot_stage_times
from tasks.report.rows import FINAL_MODEL, StageRun, model_rows

PLOTS = {
    "accuracy_latency": "accuracy vs batch-1 latency and size",
    "confusion_matrix": "confusion matrix of the INT8 student",
    "per_class_f1": "per-class F1",
    "stage_times": "stage times",
}


class ReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str
    smoke: bool = Field(False, description="a smoke run: tiny models on a data slice, so its accuracy means nothing")
    stages: dict[str, StageRun] = Field(description="this run's steps in DAG order")
    data_findings: list[dict] = Field(default_factory=list, description="the data checks' findings (allowed ones: the rest stop a run)")
    decision: dict = Field(default_factory=dict, description="the promotion gate's decision (tasks/stages/judge.py decide)")


def build_report(params: ReportParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    evaluation = read_evaluation(inputs["evaluation"])
    plot_accuracy_latency(evaluation, out / "accuracy_latency.png")
    plot_per_class_f1(evaluation, out / "per_class_f1.png")
    if FINAL_MODEL in evaluation["models"]:
        plot_confusion(evaluation, out / "confusion_matrix.png")
    plot_stage_times(params.stages, out / "stage_times.png")
    (out / "report.md").write_text(markdown_report(params.workload, params.smoke, params.stages, evaluation,
                                                          params.data_findings, params.decision))
    (out / "models.json").write_text(json.dumps(model_rows(evaluation), indent=2))
    progress.info(f"report: {len(evaluation['models'])} models, {len(params.stages)} stages")
    return {"files": sorted(p.name for p in out.iterdir())}


STAGE = Stage(
    name="report",
    writes=RUN_REPORT,
    params=ReportParams,
    inputs=("evaluation",),
    build=build_report,
    libraries=("matplotlib", "pillow"),
)
