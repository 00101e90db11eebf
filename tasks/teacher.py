"""Stage `fine_tune_teacher`: fine-tune a pretrained encoder on the labelled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field

from artifacts.stage import Progress, Stage
from tasks.models import PACKAGED, load_classifier
from tasks.tokenize import read_tokens
from tasks.training import LossFn, TrainParams, train


class TeacherParams(TrainParams):
    model: str = Field(PACKAGED, description="teacher to fine-tune: 'minilm' (packaged all-MiniLM-L6-v2), 'tiny', a local checkpoint folder or a Hub id")


def classification_loss(labels) -> LossFn:
    """Cross-entropy on the true labels (a numpy array indexed by the batch)."""
    labels = torch.as_tensor(labels)

    def loss(model, batch, input_ids, mask):
        return F.cross_entropy(model(input_ids=input_ids, attention_mask=mask).logits, labels[batch])

    return loss


def build_teacher(params: TeacherParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    tokens = inputs["tokens"]
    names = json.loads((tokens / "labels.json").read_text())["names"]
    train_ids, train_labels = read_tokens(tokens, "train")
    model = load_classifier(params.model, names, seed=params.seed)
    history = train(model, train_ids, classification_loss(train_labels), params, progress, "fine_tune_teacher", read_tokens(tokens, "validation"))
    model.save_pretrained(out / "model", safe_serialization=True)
    history["parameters"] = sum(p.numel() for p in model.parameters())
    history["layers"] = model.config.num_hidden_layers
    return history


STAGE = Stage(
    name="fine_tune_teacher",
    kind="model",
    params=TeacherParams,
    inputs=("tokens",),
    build=build_teacher,
    libraries=("torch", "transformers"),
)
