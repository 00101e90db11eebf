"""Batches of unpadded token ids, padded per batch.

Emotion tweets average ~22 tokens, but a random batch of 32 pads to ~52 (its
longest member); padding everything to a fixed 128 wastes more still. Grouping
examples of similar length (sort within shuffled windows of many batches, then
shuffle the batches) keeps training stochastic while padding little.

Padding uses the pad id of the tokenizer that made the ids (it is in the tokens
artifact); there is no default, because a wrong one silently shifts MPNet's
position ids.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator, window_batches: int = 50) -> list[np.ndarray]:
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def random_batches(count: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(count)
    return [order[i : i + batch_size] for i in range(0, count, batch_size)]


def inference_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Deterministic, length-sorted batches; callers put results back by index."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad(sequences: Sequence[np.ndarray], indices: Sequence[int], pad_id: int, to_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their 0/1 attention mask."""
    rows = [sequences[i] for i in indices]
    width = to_length or max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row[:width]
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
