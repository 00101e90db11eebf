"""What a run report shows in rows: each model variant against the teacher, and each step of the run.

The models table is formatted once (MODEL_COLUMNS), for report.md and for the Prefect
UI's table artifact (flows/publish.py) alike.
"""

from __future__ import annotations

from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

FINAL_MODEL = "student_int8"
BASELINE_MODEL = "teacher"


class StageRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["computed", "cached"]
    stage: str = Field("", description="the stage this step ran (tokenize_teacher and tokenize_student both run tokenize)")
    seconds: float = Field(ge=0)
    artifact: str


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
