"""Stage `report`: what one run produced, as report.md and PNG plots.

It reads the evaluation (quality, latency and size of every model variant) and the
run's own stage table (which stages were computed or cached, and how long each
took). The stage table belongs to the run, not to the models, so every run writes
a new report; the flow points the alias `<workload>/report` at the newest one.

Plots: accuracy against batch-1 latency and against file size for every variant,
the INT8 student's confusion matrix, per-class F1 of every variant, stage times; small
PNGs, since the UI's copy of the report carries them inline (flows/publish.py).
The models table is formatted once (MODEL_COLUMNS), for report.md and for the UI's
table artifact alike; a smoke run says so in the report's title.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Literal, Mapping

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


ROW_FIELDS = ("model", "accuracy", "macro_f1", "latency_p50_ms", "latency_p95_ms", "size_mb", "speedup", "smaller")


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
    # Past 100x a decimal is noise (smoke runs reach 900x against a tiny teacher).
    if value is None:
        return ""
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x"


# The models table as people read it, in report.md and in the Prefect UI alike:
# column header -> how a model_rows() row shows in that column.
MODEL_COLUMNS: dict[str, Callable[[dict], str]] = {
    "model": lambda r: r["model"],
    "accuracy": lambda r: f"{r['accuracy']:.2%}",
    "macro-F1": lambda r: f"{r['macro_f1']:.4f}",
    "p50 latency": lambda r: f"{r['latency_p50_ms']:.2f} ms",
    "p95 latency": lambda r: f"{r['latency_p95_ms']:.2f} ms",
    "size": lambda r: f"{r['size_mb']:.1f} MB",
    "faster than teacher": lambda r: _ratio(r["speedup"]),
    "smaller than teacher": lambda r: _ratio(r["smaller"]),
}


def readable_model_rows(rows: list[dict]) -> list[dict[str, str]]:
    """model_rows() (or models.json) formatted for people: header -> text."""
    for row in rows:
        missing = [name for name in ROW_FIELDS if name not in row]
        if missing:
            raise ValueError(f"model row {row.get('model', '?')!r} lacks {missing}: "
                             "rows come from model_rows() (a run report's models.json)")
    return [{header: show(row) for header, show in MODEL_COLUMNS.items()} for row in rows]


SMOKE_NOTE = "smoke run: tiny models on a data slice, accuracy means nothing"


def report_title(workload: str, smoke: bool) -> str:
    return f"distillery report: {workload}" + (f" ({SMOKE_NOTE})" if smoke else "")


def shortfall_section(evaluation: dict) -> list[str]:
    """The INT8 student against its teacher on validation; a loud heading when it falls short."""
    gap = evaluation.get("shortfall")
    if gap is None:  # an evaluation made before shortfalls were measured
        return []
    worst = gap["worst_class"]
    heading = ("## WARNING: the INT8 student falls short of its teacher" if gap["flagged"]
               else "## The INT8 student against its teacher")
    lines = ["", heading, "",
             f"On validation ({gap['rows']} rows): accuracy {gap['student_int8']['accuracy']:.2%} against the teacher's "
             f"{gap['teacher']['accuracy']:.2%}, macro-F1 "
             f"{gap['student_int8']['macro_f1']:.4f} against {gap['teacher']['macro_f1']:.4f}; worst class "
             f"{markdown_text(worst['label'])}: F1 {worst['student_f1']:.3f} against {worst['teacher_f1']:.3f}. "
             f"Flagged beyond {gap['limits']['accuracy_points']:g} accuracy points below the teacher, or any class's F1 "
             f"more than {gap['limits']['class_f1']:g} below."]
    if gap["flagged"]:
        lines += [""] + [f"- {markdown_text(reason)}" for reason in gap["reasons"]]
        lines += ["", "A longer student schedule (--student-min-steps), more augmented copies, or class-balanced "
                      "training may close it; see docs/ for what was measured."]
    return lines


def markdown_text(text: str) -> str:
    """Text safe inside a markdown table or line: no pipes, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_report(params: ReportParams, evaluation: dict) -> str:
    names = evaluation["labels"]
    models = evaluation["models"]
    computed = [n for n, s in params.stages.items() if s.state == "computed"]
    lines = [
        f"# {report_title(params.workload, params.smoke)}",
        "",
        f"Test set: {evaluation['test_rows']} sentences, {len(names)} classes. Latency: batch 1, "
        f"test sentences at their real lengths, {evaluation['threads']} CPU threads.",
        "",
        "## Models",
        "",
        "| " + " | ".join(MODEL_COLUMNS) + " |",
        "|---|" + "---:|" * (len(MODEL_COLUMNS) - 1),
    ]
    for row in readable_model_rows(model_rows(evaluation)):
        lines.append("| " + " | ".join(row.values()) + " |")
    lines += ["", "![accuracy vs latency and size](accuracy_latency.png)"]
    lines += shortfall_section(evaluation)
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


# Tick values per decade, in order of preference: 1-2-5 unless that puts too few labels
# on the data's range (17.5 to 23.4 MB: 15, 20, 30) or too many (a range of many
# decades: one label each). Matplotlib's own log locator labels decades only, which
# left 0.7 to 10 ms with a lonely "1" and 17 to 90 MB with no label at all.
LOG_TICK_STEPS = {"1-2-5": (1.0, 2.0, 5.0), "fine": (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), "decades": (1.0,)}


def _bracketing_ticks(low: float, high: float, steps: tuple[float, ...]) -> list[float]:
    """Tick values from the last one at or below low to the first one at or above high."""
    decades = range(int(np.floor(np.log10(low))) - 1, int(np.ceil(np.log10(high))) + 2)
    values = sorted(float(f"{m * 10.0 ** d:.6g}") for d in decades for m in steps)
    first = max(v for v in values if v <= low * (1 + 1e-9))
    last = min(v for v in values if v >= high * (1 - 1e-9))
    return [v for v in values if first <= v <= last]


def log_ticks(low: float, high: float, fewest: int = 4, most: int = 10) -> list[float]:
    """Round values to label a log axis over [low, high]; the first is at or below low
    and the last at or above high, so the labels bracket every point."""
    if not (0 < low <= high < float("inf")):
        raise ValueError(f"a log axis needs 0 < low <= high < inf, got {low!r} and {high!r}")
    candidates = {name: _bracketing_ticks(low, high, steps) for name, steps in LOG_TICK_STEPS.items()}
    for ticks in candidates.values():
        if fewest <= len(ticks) <= most:
            return ticks
    if len(candidates["1-2-5"]) > most:
        return candidates["decades"]
    if len(candidates["fine"]) < 3:  # (nearly) one value: label its neighbourhood too
        return log_ticks(low / 1.5, high * 1.5, fewest, most)
    return candidates["fine"]


def accuracy_latency_figure(evaluation: dict):
    """The figure of accuracy_latency.png, open, for saving or for inspecting its axes."""
    from matplotlib import ticker

    rows = model_rows(evaluation)
    plt, fig, axes = _figure(10, 4, columns=2)
    for ax, x, xlabel in ((axes[0], "latency_p50_ms", "batch-1 latency p50 (ms, log)"),
                          (axes[1], "size_mb", "file size (MB, log)")):
        for r in rows:
            ax.scatter(r[x], 100 * r["accuracy"], s=60)
            ax.annotate(r["model"], (r[x], 100 * r["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
        ax.set_xscale("log")
        values = [r[x] for r in rows]
        ticks = log_ticks(min(values), max(values))
        # Room around the outermost points (a fifth of a decade) and their labels.
        ax.set_xlim(min(ticks[0], min(values) / 1.6), max(ticks[-1], max(values) * 1.6))
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.margins(y=0.15)  # the labels above the highest point stay inside the frame
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.15)
    fig.suptitle("Accuracy against speed and size (up and left is better)")
    fig.tight_layout()
    return plt, fig


def _save(plt, fig, path: Path) -> None:
    """A compact PNG: the plots travel inside the run's markdown artifact (base64), and a
    256-colour palette keeps all four near 50 KB instead of 120 KB, with no visible loss."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, format="PNG", optimize=True)


def plot_accuracy_latency(evaluation: dict, path: Path) -> None:
    plt, fig = accuracy_latency_figure(evaluation)
    _save(plt, fig, path)


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
    _save(plt, fig, path)


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
    _save(plt, fig, path)


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
    _save(plt, fig, path)


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
    libraries=("matplotlib", "pillow"),
)
