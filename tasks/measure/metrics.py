"""Every measurement of a model, in one place: predictions, accuracy, macro-F1,
per-class F1, the confusion matrix, and batch-1 latency.

`predict(ids, mask) -> logits` is any model: PyTorch or ONNX Runtime (tasks/measure/predictors.py).
Quantize, QAT, evaluate and the benchmarks all score through `classification_report`
and time through `interleaved_latency_ms`, so their figures compare.

Batch-1 latency of a sub-millisecond model on a shared 2-core VM drifts by 2x from
one minute to the next. Models compared with each other are therefore timed in turns
(`interleaved_latency_ms`): every round times each model once over the same
sentences, and each model reports the median of its rounds, so a slow spell
lands on all of them instead of on whichever was measured during it.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from tasks.data.batching import inference_batches, pad

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids, mask) -> logits


def predictions(predict: Predict, sequences: Sequence[np.ndarray], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """The predicted class of every sequence, in length-sorted padded batches of 64.

    Every accuracy in the project is measured this way: dynamic INT8 quantizes each
    batch's activations with one scale, so batch composition can flip a few predictions.
    """
    out = np.empty(len(sequences), dtype=np.int64)
    for batch in inference_batches([len(s) for s in sequences], batch_size):
        ids, mask = (t.numpy() for t in pad(sequences, batch, pad_id))
        out[batch] = predict(ids, mask).argmax(1)
    return out


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(predicted) == np.asarray(labels)).mean()) if len(labels) else 0.0


def classification_report(predicted: Sequence[int], labels: Sequence[int], num_labels: int) -> dict:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix (rows: true class)."""
    predicted, labels = np.asarray(predicted, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    n = num_labels
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(float)
    predicted_count, actual_count = confusion.sum(0), confusion.sum(1)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(n), where=predicted_count > 0)
    recall = np.divide(true_positive, actual_count, out=np.zeros(n), where=actual_count > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n), where=denominator > 0)
    return {
        "accuracy": accuracy(predicted, labels),
        "macro_f1": float(f1.mean()),
        "per_class_f1": [float(v) for v in f1],
        "confusion_matrix": confusion.tolist(),
    }


def quality(predict: Predict, sequences: Sequence[np.ndarray], labels: np.ndarray, num_labels: int, pad_id: int) -> dict:
    """`classification_report` of a predictor on these sequences."""
    return classification_report(predictions(predict, sequences, pad_id), labels, num_labels)


def batch1_latency_ms(predict: Predict, sentences: Sequence[np.ndarray], warmup: int) -> dict:
    """p50/p95 over `sentences`, each alone at its real length, after `warmup` untimed calls."""
    inputs = [(s[None, :], np.ones((1, len(s)), dtype=np.int64)) for s in sentences]
    for ids, mask in inputs[:warmup]:
        predict(ids, mask)
    timings = []
    for ids, mask in inputs:
        started = time.perf_counter()
        predict(ids, mask)
        timings.append((time.perf_counter() - started) * 1000)
    return {"latency_p50_ms": round(float(np.percentile(timings, 50)), 3), "latency_p95_ms": round(float(np.percentile(timings, 95)), 3)}


def interleaved_latency_ms(predictors: dict[str, Predict], sentences: dict[str, Sequence[np.ndarray]] | Sequence[np.ndarray],
                           rounds: int, warmup: int) -> dict[str, dict]:
    """`batch1_latency_ms` of each predictor, in `rounds` turns; the median round, and every round's p50.

    `sentences` is one list for all, or one list per predictor: models with their own
    tokenizers are timed on their own ids of the same texts.
    """
    per_model = sentences if isinstance(sentences, dict) else {name: sentences for name in predictors}
    measured: dict[str, list[dict]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            measured[name].append(batch1_latency_ms(predict, per_model[name], warmup))
    return {name: {"latency_p50_ms": round(float(np.median([r["latency_p50_ms"] for r in runs])), 3),
                   "latency_p95_ms": round(float(np.median([r["latency_p95_ms"] for r in runs])), 3),
                   "latency_p50_rounds_ms": [r["latency_p50_ms"] for r in runs]}
            for name, runs in measured.items()}


def gap_words(points: float, f1: float) -> str:
    """`accuracy_gap_points` and `macro_f1_gap` (teacher minus student) in words."""
    side = "below" if points > 0 else "above" if points < 0 else "level with"
    return f"accuracy {abs(points):.2f} points {side} the teacher, macro-F1 {-f1:+.4f} against it"


def shortfall(teacher: dict, student: dict, labels: Sequence[str], accuracy_points: float, class_f1: float) -> dict:
    """How far the student falls below its teacher on the same rows (two `classification_report`s).

    Flagged when accuracy drops more than `accuracy_points` (percentage points), or any
    class's F1 more than `class_f1` below the teacher's: a student that never predicts a
    rare class can hide behind a small accuracy gap.
    """
    class_gaps = [t - s for t, s in zip(teacher["per_class_f1"], student["per_class_f1"])]
    worst = int(np.argmax(class_gaps))
    result = {
        "accuracy_gap_points": round(100 * (teacher["accuracy"] - student["accuracy"]), 3),
        "macro_f1_gap": round(teacher["macro_f1"] - student["macro_f1"], 5),
        "worst_class": {"label": labels[worst], "teacher_f1": round(teacher["per_class_f1"][worst], 5),
                        "student_f1": round(student["per_class_f1"][worst], 5), "gap": round(class_gaps[worst], 5)},
        "limits": {"accuracy_points": accuracy_points, "class_f1": class_f1},
    }
    reasons = []
    if result["accuracy_gap_points"] > accuracy_points:
        reasons.append(f"accuracy {result['accuracy_gap_points']:.2f} points below the teacher (limit {accuracy_points:g})")
    for label, gap, t, s in zip(labels, class_gaps, teacher["per_class_f1"], student["per_class_f1"]):
        if gap > class_f1:
            reasons.append(f"class {label!r} F1 {s:.3f} against the teacher's {t:.3f} (more than {class_f1:g} below)")
    result["flagged"] = bool(reasons)
    result["reasons"] = reasons
    return result
