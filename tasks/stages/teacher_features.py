"""Stage `teacher_features`: the pretrained teacher's embeddings and lowest layers, run once.

With `--teacher-frozen-layers N` (N > 0) the teacher's embeddings and lowest N layers do
not learn (tasks/models/frozen.py), so their outputs for every training and validation
text are computed once, here, in inference mode and the teacher's precision, and kept
as an artifact of their own: every epoch of fine_tune_teacher, and every later run with
the same tokens, model, N, precision and device, starts from them. Keyed by exactly
those (and the seed, only where the model's weights are random: a tiny test model);
not by the teacher's learning rate, epochs or schedule.

The hidden states are stored as float16 (numpy has no bfloat16): a bf16 run computes
them in bf16 autocast, whose outputs (after each layer's LayerNorm) are FP32, and
float16 keeps 3 more mantissa bits than bf16 did inside the layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.data.batching import inference_batches, pad
from tasks.formats import FEATURE_SPLITS, TEACHER_FEATURES, open_tokens, write_feature_split, write_features_meta
from tasks.models.frozen import check_frozen, frozen_digest, lower_hidden_states
from tasks.models.loading import PACKAGED, load_classifier
from tasks.training.device import autocast

BATCH = 64  # texts per inference batch (length-sorted, so little padding)
FLOAT16_MAX = float(np.finfo(np.float16).max)


class TeacherFeatureParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(PACKAGED, description="the teacher (as --teacher)")
    frozen_layers: int = Field(1, ge=1, le=100, description="embeddings and this many lowest layers run here")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="the teacher's precision (resolved, never auto)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="the teacher's device (resolved, never auto)")
    seed: int = Field(0, description="the teacher's seed where its weights are random (tiny models); 0 for a pretrained one, whose lower layers do not depend on it")


@torch.inference_mode()
def hidden_states_of(model, sequences, pad_id: int, frozen: int, precision: str, device: str,
                     progress: Progress, label: str) -> list[np.ndarray]:
    """Each sequence's hidden states after the lowest `frozen` layers, (length, hidden) float16, in input order."""
    model.eval()  # no dropout: these outputs are computed once (tasks/models/frozen.py)
    model.to(device)
    rows: list[np.ndarray | None] = [None] * len(sequences)
    batches = inference_batches([len(s) for s in sequences], BATCH)
    for done, batch in enumerate(batches, start=1):
        input_ids, mask = (t.to(device) for t in pad(sequences, batch, pad_id))
        with autocast(precision, device):
            hidden = lower_hidden_states(model, input_ids, mask, frozen).float()
        if not torch.isfinite(hidden).all() or hidden.abs().max() > FLOAT16_MAX:
            raise RuntimeError(f"{label}: hidden states after layer {frozen} do not fit float16 (max "
                               f"{hidden.abs().max().item():.4g}); train with --teacher-frozen-layers 0")
        values = hidden.cpu().numpy().astype(np.float16)
        for position, row in enumerate(batch):
            rows[row] = values[position, : len(sequences[row])]
        progress.step(label, done, len(batches))
    return rows  # type: ignore[return-value]


def build_features(params: TeacherFeatureParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    tokens = open_tokens(inputs["tokens"])
    model = load_classifier(params.model, tokens.labels, seed=params.seed)
    check_frozen(model, params.frozen_layers)
    counts = {}
    for split in FEATURE_SPLITS:
        ids, _ = tokens.split(split)
        rows = hidden_states_of(model, ids, tokens.spec.pad_id, params.frozen_layers, params.precision, params.device,
                                progress, f"teacher_features {split}")
        counts[split] = write_feature_split(out, split, rows)
        del rows
    meta = {
        "model": params.model,
        "frozen_layers": params.frozen_layers,
        "hidden_size": int(model.config.hidden_size),
        "layers": int(model.config.num_hidden_layers),
        "dtype": "float16",
        "splits": counts,
        "texts_sha256": {split: tokens.spec.texts_sha256.get(split, "") for split in FEATURE_SPLITS},
        # The teacher checks it loaded the very weights these came from (a random tiny model of another seed would not be).
        "frozen_sha256": frozen_digest(model, params.frozen_layers),
    }
    write_features_meta(out, meta)
    return {"frozen_layers": params.frozen_layers, "precision": params.precision,
            **{f"{split}_tokens": counts[split]["tokens"] for split in FEATURE_SPLITS}}


STAGE = Stage(
    name="teacher_features",
    writes=TEACHER_FEATURES,
    params=TeacherFeatureParams,
    inputs=("tokens",),
    build=build_features,
    libraries=("torch", "transformers"),
)
