"""Stage `fine_tune_teacher`: fine-tune a pretrained encoder on the labelled data, on its own tokens.

With `frozen_layers` N > 0 only the upper layers and the head learn, from the hidden
states stage `teacher_features` computed once after the embeddings and the lowest N
layers (tasks/models/frozen.py says what that leaves out: dropout there, and training
MPNet's shared position bias). The saved model is still the whole model, so whatever
reads it is unchanged. With N = 0 (the default) the stage reads no features and trains
every layer, as it always has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pydantic import Field

from artifacts.stage import Progress, Stage
from tasks.errors import DistilleryError
from tasks.formats import MODEL, model_folder, open_features, open_tokens
from tasks.models.frozen import frozen_digest, frozen_parameters, upper_only
from tasks.models.loading import PACKAGED, load_classifier
from tasks.training.cached import cached_classification_loss, cached_logits, check_lengths
from tasks.training.loop import TrainParams, classification_loss, train


class TeacherParams(TrainParams):
    model: str = Field(PACKAGED, description="teacher to fine-tune: 'minilm' (packaged all-MiniLM-L6-v2), 'mpnet' (packaged all-mpnet-base-v2), 'tiny', 'tiny-mpnet', a local checkpoint folder or a Hub id")
    frozen_layers: int = Field(0, ge=0, le=100, description="freeze the embeddings and this many lowest layers: their outputs are computed once (stage teacher_features) and only the layers above them learn (0: every layer learns)")


def build_teacher(params: TeacherParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    tokens = open_tokens(inputs["tokens"])
    train_ids, train_labels = tokens.split("train")
    validation = tokens.split("validation")
    model = load_classifier(params.model, tokens.labels, seed=params.seed)
    if bool(params.frozen_layers) != ("features" in inputs):
        raise DistilleryError(f"fine_tune_teacher: frozen_layers {params.frozen_layers} "
                              f"{'needs' if params.frozen_layers else 'takes no'} cached teacher features")
    if params.frozen_layers:
        history = _train_above_frozen(model, inputs["features"], train_ids, train_labels, validation, params, progress,
                                      tokens.spec.pad_id)
    else:
        history = train(model, train_ids, classification_loss(train_labels), params, progress, "fine_tune_teacher",
                        tokens.spec.pad_id, validation)
    model.save_pretrained(model_folder(out), safe_serialization=True)
    history["parameters"] = sum(p.numel() for p in model.parameters())
    history["layers"] = model.config.num_hidden_layers
    history["architecture"] = model.config.model_type
    return history


def _train_above_frozen(model, folder: Path, train_ids, train_labels, validation, params: TeacherParams,
                        progress: Progress, pad_id: int) -> dict:
    features = open_features(folder)
    frozen = params.frozen_layers
    if features.meta["frozen_layers"] != frozen or features.meta["frozen_sha256"] != frozen_digest(model, frozen):
        raise DistilleryError(f"fine_tune_teacher: the cached features were computed by another model or depth "
                              f"({features.meta['model']}, {features.meta['frozen_layers']} layers) than this teacher's "
                              f"lowest {frozen} layers")
    train_features, validation_features = features.split("train"), features.split("validation")
    check_lengths(train_features, train_ids, "train")
    check_lengths(validation_features, validation[0], "validation")
    device, precision = params.runs_on()
    with upper_only(model, frozen) as upper:
        history = train(upper, train_ids, cached_classification_loss(train_labels, train_features), params, progress,
                        "fine_tune_teacher", pad_id, validation,
                        validation_logits=lambda m: cached_logits(m, validation_features, validation[0], pad_id,
                                                                  precision, device))
    history["frozen_layers"] = frozen
    history["trained_parameters"] = (sum(p.numel() for p in model.parameters())
                                     - sum(v.numel() for v in frozen_parameters(model, frozen).values()))
    return history


STAGE = Stage(
    name="fine_tune_teacher",
    writes=MODEL,
    params=TeacherParams,
    inputs=("tokens", "features"),
    optional=("features",),
    build=build_teacher,
    libraries=("torch", "transformers"),
)
