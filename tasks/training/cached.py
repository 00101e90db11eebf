"""Training and scoring a classifier's upper layers from cached hidden states (tasks/models/frozen.py).

The training loop (tasks/training/loop.py) plans and pads batches of token ids as
always; the loss here ignores the ids and feeds the batch's cached hidden states, padded
to the same width, as `inputs_embeds`, with the same attention mask. Pad positions get
zeros: they are masked as keys, and the head reads the first token, so their values
never reach the logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tasks.data.batching import inference_batches, pad
from tasks.training.device import autocast
from tasks.training.loop import LossFn

Features = tuple[np.ndarray, np.ndarray]  # (every token's hidden state, row offsets), as TeacherFeatures.split gives


def check_lengths(features: Features, sequences: Sequence[np.ndarray], split: str) -> None:
    """The cached rows are these sequences': one row each, of the same length."""
    lengths = np.diff(features[1])
    if len(lengths) != len(sequences) or not np.array_equal(lengths, [len(s) for s in sequences]):
        raise ValueError(f"the cached teacher features of {split} do not match its tokens ({len(lengths)} rows against "
                         f"{len(sequences)}, or other lengths): they were made from other tokens")


def cached_batch(features: Features, batch: Sequence[int], width: int) -> torch.Tensor:
    """(len(batch), width, hidden) float32: each row's cached hidden states, zero-padded on the right."""
    values, offsets = features
    out = np.zeros((len(batch), width, values.shape[1]), dtype=np.float32)
    for i, row in enumerate(batch):
        start, end = int(offsets[row]), int(offsets[row + 1])
        out[i, : min(width, end - start)] = values[start: min(end, start + width)]
    return torch.from_numpy(out)


def cached_classification_loss(labels: np.ndarray, features: Features) -> LossFn:
    """Cross-entropy on the true labels, the model (inside `upper_only`) fed the cached hidden states."""
    labels_t = torch.as_tensor(labels)

    def loss(model, batch, input_ids, mask, step):
        embeds = cached_batch(features, batch, input_ids.shape[1]).to(input_ids.device)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits.float()
        return F.cross_entropy(logits, labels_t[batch].to(input_ids.device))

    return loss


@torch.inference_mode()
def cached_logits(model: torch.nn.Module, features: Features, sequences: Sequence[np.ndarray], pad_id: int,
                  precision: str = "fp32", device: str = "cpu", batch_size: int = 128) -> np.ndarray:
    """Logits (FP32) of every row from its cached hidden states; `sequences` give the lengths and masks."""
    model.eval()
    out: np.ndarray | None = None
    for batch in inference_batches([len(s) for s in sequences], batch_size):
        _, mask = pad(sequences, batch, pad_id)
        mask = mask.to(device)
        embeds = cached_batch(features, batch, mask.shape[1]).to(device)
        with autocast(precision, device):
            logits = model(inputs_embeds=embeds, attention_mask=mask).logits.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(sequences), logits.shape[1]), dtype=np.float32)
        out[batch] = logits
    assert out is not None, "no sequences to score"
    return out
