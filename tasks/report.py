"""Stage `report`: what one run produced, as report.md and PNG plots.

It reads the evaluation (quality, latency and size of every model variant) and the
run's own stage table (which stages were computed or cached, and how long each
took). The stage table belongs to the run, not to the models, so every run writes
a new report; the flow points the alias `<workload>/report` at the newest one.

Plots: accuracy against batch-1 latency and against file size for every variant,
the INT8 student's confusion matrix, per-class F1 of every variant, stage times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.formats import RUN_REPORT, read_evaluation

PLOTS = {
    "accuracy_latency": "accuracy vs batch-1 latency and size",
    "confusion_matrix": "confusion matrix of the INT8 student",
    "per_class_f1": "per-class F1",
    "stage_times": "stage times",
}
FINAL_MODEL = "student_int8"
BASELINE_MODEL = "teacher"
COLOURS = {"computed": "#d95f02", "cached": "#1b9e77"}


class StageRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["computed", "cached"]
    stage: str = Field("", description="the stage this step ran (tokenize_teacher and tokenize_student both run tokenize)")
    seconds: float = Field(ge=0)
    artifact: str


class ReportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str
    smoke: bool = Field(False, description="a smoke run: tiny models on a data slice, so its accuracy means nothing")
    stages: dict[str, StageRun] = Field(description="this run's steps in DAG order")


def model_rows(evaluation: dict) -> list[dict]:
    """One row per model variant, with its speed-up and size ratio to the baseline."""
    models = evaluation["models"]
    base = models.get(BASELINE_MODEL)
    rows = []
    for name, m in models.items():
        rows.append({
            "model": name,
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "latency_p50_ms": m["latency_p50_ms"],
            "latency_p95_ms": m["latency_p95_ms"],
            "size_mb": m["size_bytes"] / 1e6,
            "speedup": base["latency_p50_ms"] / m["latency_p50_ms"] if base else None,
            "smaller": base["size_bytes"] / m["size_bytes"] if base else None,
        })
    return rows


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}x"


def markdown_report(params: ReportParams, evaluation: dict) -> str:
    names = evaluation["labels"]
    models = evaluation["models"]
    computed = [n for n, s in params.stages.items() if s.state == "computed"]
    lines = [
        f"# distillery report: {params.workload}",
        "",
        f"Test set: {evaluation['test_rows']} sentences, {len(names)} classes. Latency: batch 1, "
        f"test sentences at their real lengths, {evaluation['threads']} CPU threads.",
        "",
        "## Models",
        "",
        "| model | accuracy | macro-F1 | p50 ms | p95 ms | size MB | faster than teacher | smaller than teacher |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in model_rows(evaluation):
        lines.append(f"| {r['model']} | {r['accuracy']:.2%} | {r['macro_f1']:.4f} | {r['latency_p50_ms']:.2f} | "
                     f"{r['latency_p95_ms']:.2f} | {r['size_mb']:.1f} | {_ratio(r['speedup'])} | {_ratio(r['smaller'])} |")
    lines += ["", "![accuracy vs latency and size](accuracy_latency.png)"]
    lines += ["", "## Per-class F1", "", "| class | " + " | ".join(models) + " |",
              "|---|" + "---:|" * len(models)]
    for i, label in enumerate(names):
        lines.append(f"| {label} | " + " | ".join(f"{m['per_class_f1'][i]:.3f}" for m in models.values()) + " |")
    lines += ["", "![per-class F1](per_class_f1.png)"]
    if FINAL_MODEL in models:
        lines += ["", f"## Confusion matrix of {FINAL_MODEL} (rows: true class, columns: predicted)", "",
                  "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label, row in zip(names, models[FINAL_MODEL]["confusion_matrix"]):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    total = sum(s.seconds for s in params.stages.values())
    lines += ["", "## Stages", "",
              f"{len(computed)} of {len(params.stages)} stages computed, {len(params.stages) - len(computed)} "
              f"served from the cache; {total:.1f} s in stages.", "",
              "| stage | state | seconds | artifact |", "|---|---|---:|---|"]
    for name, s in params.stages.items():
        lines.append(f"| {name} | {s.state} | {s.seconds:.1f} | `{s.artifact[:12]}` |")
    lines += ["", "![stage times](stage_times.png)"]
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float, columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(width, height), dpi=100)
    return plt, fig, axes


def plot_accuracy_latency(evaluation: dict, path: Path) -> None:
    from matplotlib import ticker

    rows = model_rows(evaluation)
    plt, fig, axes = _figure(10, 4, columns=2)
    for ax, x, xlabel in ((axes[0], "latency_p50_ms", "batch-1 latency p50 (ms, log)"),
                          (axes[1], "size_mb", "file size (MB, log)")):
        for r in rows:
            ax.scatter(r[x], 100 * r["accuracy"], s=60)
            ax.annotate(r["model"], (r[x], 100 * r["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Accuracy against speed and size (up and left is better)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(evaluation: dict, path: Path) -> None:
    names = evaluation["labels"]
    matrix = np.asarray(evaluation["models"][FINAL_MODEL]["confusion_matrix"], dtype=float)
    share = matrix / np.maximum(1, matrix.sum(1, keepdims=True))
    plt, fig, ax = _figure(1.2 * len(names) + 2, 1.0 * len(names) + 1.5)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{FINAL_MODEL}: confusion matrix (counts; colour: share of the row)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_per_class_f1(evaluation: dict, path: Path) -> None:
    names, models = evaluation["labels"], evaluation["models"]
    plt, fig, ax = _figure(max(6, 1.3 * len(names)), 4)
    width = 0.8 / len(models)
    for k, (model, m) in enumerate(models.items()):
        ax.bar(np.arange(len(names)) + (k - (len(models) - 1) / 2) * width, m["per_class_f1"], width, label=model)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(loc="lower right")
    ax.set_title("Per-class F1")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_stage_times(params: ReportParams, path: Path) -> None:
    names = list(params.stages)
    plt, fig, ax = _figure(8, 0.45 * len(names) + 1.5)
    seconds = [params.stages[n].seconds for n in names]
    colours = [COLOURS[params.stages[n].state] for n in names]
    ax.barh(names, seconds, color=colours)
    ax.invert_yaxis()  # DAG order, top to bottom
    for i, (s, n) in enumerate(zip(seconds, names)):
        ax.text(s, i, f" {s:.1f}s {params.stages[n].state}", va="center", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(seconds + [1]) * 1.35)
    ax.set_title("Stage times (orange computed, green cached)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_report(params: ReportParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    evaluation = read_evaluation(inputs["evaluation"])
    plot_accuracy_latency(evaluation, out / "accuracy_latency.png")
    plot_per_class_f1(evaluation, out / "per_class_f1.png")
    if FINAL_MODEL in evaluation["models"]:
        plot_confusion(evaluation, out / "confusion_matrix.png")
    plot_stage_times(params, out / "stage_times.png")
    (out / "report.md").write_text(markdown_report(params, evaluation))
    (out / "models.json").write_text(json.dumps(model_rows(evaluation), indent=2))
    progress.info(f"report: {len(evaluation['models'])} models, {len(params.stages)} stages")
    return {"files": sorted(p.name for p in out.iterdir())}


STAGE = Stage(
    name="report",
    writes=RUN_REPORT,
    params=ReportParams,
    inputs=("evaluation",),
    build=build_report,
    libraries=("matplotlib",),
)
