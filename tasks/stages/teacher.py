"""Stage `fine_tune_teacher`: fine-tune a pretrained encoder on the labelled data, on its own tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pydantic import Field

from artifacts.stage import Progress, Stage
from tasks.formats import MODEL, model_folder, open_tokens
from tasks.models.loading import PACKAGED, load_classifier
from tasks.training.loop import TrainParams, classification_loss, train


class TeacherParams(TrainParams):
    model: str = Field(PACKAGED, description="teacher to fine-tune: 'minilm' (packaged all-MiniLM-L6-v2), 'mpnet' (packaged all-mpnet-base-v2), 'tiny', 'tiny-mpnet', a local checkpoint folder or a Hub id")


def build_teacher(params: TeacherParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    tokens = open_tokens(inputs["tokens"])
    train_ids, train_labels = tokens.split("train")
    model = load_classifier(params.model, tokens.labels, seed=params.seed)
    history = train(model, train_ids, classification_loss(train_labels), params, progress, "fine_tune_teacher",
                    tokens.spec.pad_id, tokens.split("validation"))
    model.save_pretrained(model_folder(out), safe_serialization=True)
    history["parameters"] = sum(p.numel() for p in model.parameters())
    history["layers"] = model.config.num_hidden_layers
    history["architecture"] = model.config.model_type
    return history


STAGE = Stage(
    name="fine_tune_teacher",
    writes=MODEL,
    params=TeacherParams,
    inputs=("tokens",),
    build=build_teacher,
    libraries=("torch", "transformers"),
)
