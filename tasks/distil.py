"""Stage `distil_student`: a shallower copy of the teacher, trained on its logits.

The student is built DistilBERT-style: same width, a subset of the teacher's layers
(every other one by default), with embeddings, pooler and classifier copied from
the fine-tuned teacher. It is then trained to match the teacher's logits. The
default loss is the mean squared error between student and teacher logits (the
loss of Intel's BERT-Mini SST-2 recipe); "kl" is the usual Hinton-style loss on
temperature-softened distributions. Either can be mixed with hard-label cross-entropy,
and with intermediate-layer matching (`hidden_weight`): the MSE between each student
layer's hidden states and those of the teacher layer it was copied from, over real
tokens only, in the spirit of TinyBERT and MiniLM's layer-wise distillation.

The training set is the labelled train split plus whatever `augment_data` made: its
teacher-labelled variants are trained on the teacher's logits like every other
example (their hard label, if `hard_label_weight` asks for one, is the teacher's).

`model` starts the student from a pretrained checkpoint instead (a Hub id such as
google/bert_uncased_L-4_H-256_A-4 for online users, or a local folder); it must read
the teacher's token ids, so its vocabulary must be the teacher's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
import numpy as np
from pydantic import Field, field_validator, model_validator

from artifacts.stage import Progress, Stage
from tasks.errors import DistilleryError
from tasks.augment import read_augmented
from tasks.models import load_classifier, load_config, load_trained
from tasks.tokenize import read_tokens
from tasks.training import TrainParams, predict_logits, train


class StudentParams(TrainParams):
    layers: list[int] | None = Field(None, description="teacher layers the student keeps, e.g. [0, 2, 4]; default every other layer")
    model: str | None = Field(None, description="start from this pretrained checkpoint (Hub id or local folder) instead of the teacher's layers; it must share the teacher's vocabulary")
    loss: Literal["mse", "kl"] = Field("mse", description="distillation loss on logits: mse (Intel's BERT-Mini recipe) or kl with temperature")
    temperature: float = Field(2.0, gt=0, le=20, description="softening temperature for the kl loss")
    hard_label_weight: float = Field(0.0, ge=0, le=1, description="weight of cross-entropy on the true labels, mixed into the loss")
    hidden_weight: float = Field(0.0, ge=0, le=100, description="weight of intermediate-layer matching (hidden-state MSE against the teacher layer each student layer came from), added to the loss; 0: off")
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="peak AdamW learning rate")

    @field_validator("layers")
    @classmethod
    def _layers_are_distinct_and_ordered(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None:
            if not layers:
                raise ValueError("student layers must not be empty")
            if sorted(set(layers)) != layers or min(layers) < 0:
                raise ValueError(f"student layers {layers} must be distinct, ascending, non-negative indices")
        return layers

    @model_validator(mode="after")
    def _one_way_to_build(self) -> "StudentParams":
        if self.model is not None and self.layers is not None:
            raise ValueError("set either student layers (a copy of teacher layers) or student model (a pretrained checkpoint), not both")
        if self.model is not None and self.hidden_weight > 0:
            raise ValueError("hidden_weight matches student layers to the teacher layers they were copied from; "
                             "a pretrained student model has no such layers: use hidden_weight 0")
        return self


def check_student(params: "StudentParams", teacher_config) -> None:
    """Fails in seconds, before any training, if this student cannot be built for this teacher."""
    if params.model is None:
        student_layers(params, teacher_config.num_hidden_layers)
        return
    student_config = load_config(params.model)
    if student_config.vocab_size != teacher_config.vocab_size:
        raise DistilleryError(
            f"student model {params.model!r} has a vocabulary of {student_config.vocab_size} tokens, the "
            f"teacher {teacher_config.vocab_size}: the student reads the teacher's token ids, so pick a "
            f"checkpoint with the teacher's vocabulary (for MiniLM: any bert-base-uncased one, e.g. "
            f"google/bert_uncased_L-4_H-256_A-4), or leave --student-model unset"
        )


def student_layers(params: StudentParams, teacher_layers: int) -> list[int]:
    layers = params.layers if params.layers is not None else list(range(0, teacher_layers, 2))
    if max(layers) >= teacher_layers:
        raise DistilleryError(
            f"student layers {layers} do not fit a {teacher_layers}-layer teacher: pick layers "
            f"from 0..{teacher_layers - 1} (e.g. --student-layers "
            f"{','.join(map(str, range(0, teacher_layers, 2)))})"
        )
    return layers


def shrink(teacher: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """The teacher with only `layers` kept in its encoder, weights copied."""
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = torch.nn.ModuleList(encoder.layer[i] for i in layers)
    student.config.num_hidden_layers = len(layers)
    for position, layer in enumerate(encoder.layer):
        if hasattr(layer, "attention") and hasattr(layer.attention, "self"):
            layer.attention.self.layer_idx = position  # keeps cache indexing consistent
    return student


def distillation_loss(params: StudentParams, student_logits, teacher_logits, labels) -> torch.Tensor:
    if params.loss == "mse":
        soft = F.mse_loss(student_logits, teacher_logits)
    else:
        t = params.temperature
        soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                        log_target=True, reduction="batchmean") * t * t
    if params.hard_label_weight == 0:
        return soft
    hard = F.cross_entropy(student_logits, labels)
    return (1 - params.hard_label_weight) * soft + params.hard_label_weight * hard


def hidden_state_loss(student_hidden, teacher_hidden, layers: list[int], mask: torch.Tensor) -> torch.Tensor:
    """Mean over student layers of the masked MSE to the teacher layer it was copied from.

    hidden_states[0] is the embedding output, so student layer i is index i + 1 and
    teacher layer layers[i] is index layers[i] + 1.
    """
    weight = mask.unsqueeze(-1).to(student_hidden[0].dtype)
    count = weight.sum() * student_hidden[0].shape[-1]
    losses = [(((student_hidden[i + 1] - teacher_hidden[t + 1]) ** 2) * weight).sum() / count for i, t in enumerate(layers)]
    return torch.stack(losses).mean()


def build_student(params: StudentParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    tokens = inputs["tokens"]
    teacher = load_trained(inputs["teacher"] / "model")
    check_student(params, teacher.config)
    train_ids, train_labels = read_tokens(tokens, "train")
    progress.info(f"distil_student: teacher logits for {len(train_ids)} examples")
    teacher_logits = predict_logits(teacher, train_ids)
    extra_ids, extra_logits = read_augmented(inputs["augmented"])
    sequences = train_ids + extra_ids
    if extra_ids:
        progress.info(f"distil_student: plus {len(extra_ids)} teacher-labelled augmented examples")
        teacher_logits = np.concatenate([teacher_logits, extra_logits])
        train_labels = np.concatenate([train_labels, extra_logits.argmax(1)])
    teacher_logits, labels = torch.from_numpy(teacher_logits), torch.from_numpy(train_labels)
    if params.model is None:
        layers = student_layers(params, teacher.config.num_hidden_layers)
        student = shrink(teacher, layers)
    else:
        layers = None
        student = load_classifier(params.model, [teacher.config.id2label[i] for i in range(teacher.config.num_labels)], seed=params.seed)
    if params.hidden_weight == 0:
        del teacher  # only its logits are needed, and they are computed

    def loss(model, batch, input_ids, mask):
        out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=params.hidden_weight > 0)
        total = distillation_loss(params, out.logits, teacher_logits[batch], labels[batch])
        if params.hidden_weight > 0:
            with torch.no_grad():
                target = teacher(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            total = total + params.hidden_weight * hidden_state_loss(out.hidden_states, target, layers, mask)
        return total

    history = train(student, sequences, loss, params, progress, "distil_student", read_tokens(tokens, "validation"))
    student.save_pretrained(out / "model", safe_serialization=True)
    (out / "student.json").write_text(json.dumps({"teacher_layers": layers, "pretrained": params.model}))
    history["layers"] = layers  # the teacher layers it was copied from; None for a pretrained student
    history["num_layers"] = student.config.num_hidden_layers
    history["augmented_examples"] = len(extra_ids)
    history["parameters"] = sum(p.numel() for p in student.parameters())
    return history


STAGE = Stage(
    name="distil_student",
    kind="model",
    params=StudentParams,
    inputs=("tokens", "teacher", "augmented"),
    build=build_student,
    libraries=("torch", "transformers"),
)
