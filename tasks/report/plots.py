"""The report's plots: accuracy against latency and size, per-class F1, the INT8 student's
confusion matrix, stage times; small PNGs, since the UI's copy of the report carries them
inline (flows/publish.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from tasks.report.rows import FINAL_MODEL, StageRun, model_rows

COLOURS = {"computed": "#d95f02", "cached": "#1b9e77"}


def plot_text(text: str) -> str:
    """A label name as matplotlib shows it literally: one line, and `$` not read as the start
    of mathtext (an unmatched `$` fails the whole figure, after all the training has run)."""
    return " ".join(str(text).split()).replace("$", r"\$")


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
    ax.set_xticks(range(len(names)), [plot_text(n) for n in names], rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [plot_text(n) for n in names])
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
    ax.set_xticks(range(len(names)), [plot_text(n) for n in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(loc="lower right")
    ax.set_title("Per-class F1")
    fig.tight_layout()
    _save(plt, fig, path)


def plot_stage_times(stages: Mapping[str, StageRun], path: Path) -> None:
    names = list(stages)
    plt, fig, ax = _figure(8, 0.45 * len(names) + 1.5)
    seconds = [stages[n].seconds for n in names]
    colours = [COLOURS[stages[n].state] for n in names]
    ax.barh(names, seconds, color=colours)
    ax.invert_yaxis()  # DAG order, top to bottom
    for i, (s, n) in enumerate(zip(seconds, names)):
        ax.text(s, i, f" {s:.1f}s {stages[n].state}", va="center", fontsize=9)
    ax.set_xlabel("seconds")
    ax.set_xlim(0, max(seconds + [1]) * 1.35)
    ax.set_title("Stage times (orange computed, green cached)")
    fig.tight_layout()
    _save(plt, fig, path)
