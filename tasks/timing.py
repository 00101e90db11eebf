"""Running a predictor, PyTorch or ONNX Runtime alike: batched predictions, and
batch-1 latency (how a service answering single requests sees a model).

Batch-1 latency of a sub-millisecond model on a shared 2-core VM drifts by 2x from
one minute to the next. Models compared with each other are therefore timed in turns
(`interleaved_latency_ms`): every round times each model once over the same
sentences, and each model reports the median of its rounds, so a slow spell
lands on all of them instead of on whichever was measured during it.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from tasks.batching import inference_batches, pad

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids, mask) -> logits


def predictions(predict: Predict, sequences: list[np.ndarray]) -> np.ndarray:
    """The predicted class of every sequence, in length-sorted padded batches of 64.

    Every accuracy in the project is measured this way: dynamic INT8 quantizes each
    batch's activations with one scale, so batch composition can flip a few predictions.
    """
    out = np.empty(len(sequences), dtype=np.int64)
    for batch in inference_batches([len(s) for s in sequences], 64):
        ids, mask = (t.numpy() for t in pad(sequences, batch))
        out[batch] = predict(ids, mask).argmax(1)
    return out


def batch1_latency_ms(predict: Predict, sentences: list[np.ndarray], warmup: int) -> dict:
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


def interleaved_latency_ms(predictors: dict[str, Predict], sentences: list[np.ndarray], rounds: int, warmup: int) -> dict[str, dict]:
    """`batch1_latency_ms` of each predictor, in `rounds` turns; the median round, and every round's p50."""
    measured: dict[str, list[dict]] = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predict in predictors.items():
            measured[name].append(batch1_latency_ms(predict, sentences, warmup))
    return {name: {"latency_p50_ms": round(float(np.median([r["latency_p50_ms"] for r in runs])), 3),
                   "latency_p95_ms": round(float(np.median([r["latency_p95_ms"] for r in runs])), 3),
                   "latency_p50_rounds_ms": [r["latency_p50_ms"] for r in runs]}
            for name, runs in measured.items()}
