"""Batch-1 latency: how a service answering single requests sees a model."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (ids, mask) -> logits


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
