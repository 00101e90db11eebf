"""Running a predictor, PyTorch or ONNX Runtime alike: batched predictions, and
batch-1 latency (how a service answering single requests sees a model)."""

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
