"""Stage `distil_student`: a small model trained on the teacher's soft labels.

The student reads its own tokens (its tokenizer may not be the teacher's) and the
teacher's logits from `soft_labels`, row-aligned with the train split and the
augmented texts; for logits-only losses the teacher is never loaded. Where the
student starts (`init`):
- "teacher": DistilBERT-style, a subset of the fine-tuned teacher's layers with its
  embeddings and classifier (the teacher's architecture and tokenizer);
- "minilm": the packaged all-MiniLM-L6-v2, pretrained but not fine-tuned, cut to
  `layers`; "tiny": a tiny random BERT with MiniLM's vocabulary (tests, --smoke);
- a local checkpoint folder or a Hub id, cut to `layers` the same way.
`layers` (default: every other layer) applies to whichever is chosen.

The default loss is the mean squared error between student and teacher logits (the
loss of Intel's BERT-Mini SST-2 recipe); "kl" is the usual Hinton-style loss on
temperature-softened distributions. Either can be mixed with hard-label cross-entropy
(an augmented text's hard label is the teacher's), and with intermediate-layer
matching (`hidden_weight`): the MSE between each student layer's hidden states and
those of the corresponding teacher layer, over real tokens only, in the spirit of
TinyBERT and MiniLM's layer-wise distillation. Hidden states are aligned token by
token, so that needs the teacher's tokenizer and width; the pipeline refuses it
otherwise before any work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from artifacts.stage import Progress, Stage
from tasks.encoding import encoder_of
from tasks.errors import DistilleryError
from tasks.formats import MODEL, model_folder, open_tokens, read_augmented, read_soft_labels, soft_labels_problem
from tasks.models import check_layers, every_other_layer, load_classifier, load_trained, shrink
from tasks.training import TrainParams, train

FROM_TEACHER = "teacher"


class StudentParams(TrainParams):
    init: str = Field(FROM_TEACHER, description="where the student starts: 'teacher' (a copy of the teacher's layers), 'minilm' (the packaged all-MiniLM-L6-v2), 'tiny', a local checkpoint folder or a Hub id")
    layers: list[int] | None = Field(None, description="layers of the init model the student keeps, e.g. [0, 2, 4]; default every other layer")
    loss: Literal["mse", "kl"] = Field("mse", description="distillation loss on logits: mse (Intel's BERT-Mini recipe) or kl with temperature")
    temperature: float = Field(2.0, gt=0, le=20, description="softening temperature for the kl loss")
    hard_label_weight: float = Field(0.0, ge=0, le=1, description="weight of cross-entropy on the true labels, mixed into the loss")
    hidden_weight: float = Field(0.0, ge=0, le=100, description="weight of intermediate-layer matching (hidden-state MSE against the corresponding teacher layer; needs the teacher's tokenizer), added to the loss; 0: off")
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


def student_layers(params: StudentParams, init_depth: int) -> list[int]:
    what = "the teacher" if params.init == FROM_TEACHER else f"student init {params.init!r}"
    return check_layers(params.layers if params.layers is not None else every_other_layer(init_depth), init_depth, what)


def teacher_layer_of(student_layer: int, init_depth: int, teacher_depth: int) -> int:
    """The teacher layer a student layer matches: the same one when cut from the teacher, else the one at the same relative depth."""
    return round((student_layer + 1) * teacher_depth / init_depth) - 1


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


def hidden_state_loss(student_hidden, teacher_hidden, teacher_layers: list[int], mask: torch.Tensor) -> torch.Tensor:
    """Mean over student layers of the masked MSE to its teacher layer.

    hidden_states[0] is the embedding output, so student layer i is index i + 1 and
    teacher layer t is index t + 1.
    """
    weight = mask.unsqueeze(-1).to(student_hidden[0].dtype)
    count = weight.sum() * student_hidden[0].shape[-1]
    losses = [(((student_hidden[i + 1] - teacher_hidden[t + 1]) ** 2) * weight).sum() / count for i, t in enumerate(teacher_layers)]
    return torch.stack(losses).mean()


def initial_student(params: StudentParams, labels: list[str], teacher_artifact: Path):
    """The student before training, the init model's depth, and the layers it kept."""
    base = load_trained(model_folder(teacher_artifact)) if params.init == FROM_TEACHER else load_classifier(params.init, labels, seed=params.seed)
    depth = base.config.num_hidden_layers
    layers = student_layers(params, depth)
    return shrink(base, layers), depth, layers


def build_student(params: StudentParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    tokens = open_tokens(inputs["tokens"])
    problem = soft_labels_problem(inputs["soft_labels"], inputs["tokens"], inputs["augmented"])
    if problem:
        raise RuntimeError(f"distil_student: the soft labels do not belong to these texts: {problem}; not training on them")
    soft = read_soft_labels(inputs["soft_labels"])
    train_ids, train_labels = tokens.split("train")
    augmented, _ = read_augmented(inputs["augmented"])
    sequences = train_ids + encoder_of(tokens).encode(augmented)
    labels = np.concatenate([train_labels, soft.logits[len(train_ids):].argmax(1)]).astype(np.int64)
    teacher_logits, labels = torch.from_numpy(soft.logits), torch.from_numpy(labels)
    if augmented:
        progress.info(f"distil_student: {len(train_ids)} training and {len(augmented)} augmented texts")

    student, init_depth, layers = initial_student(params, tokens.labels, inputs["teacher"])
    teacher = None
    if params.hidden_weight > 0:
        teacher = load_trained(model_folder(inputs["teacher"]))
        if (teacher.config.vocab_size, teacher.config.hidden_size) != (student.config.vocab_size, student.config.hidden_size):
            raise DistilleryError(
                f"hidden-state matching needs the teacher's tokenizer and width: teacher vocabulary "
                f"{teacher.config.vocab_size} / hidden {teacher.config.hidden_size}, student "
                f"{student.config.vocab_size} / {student.config.hidden_size}; use --student-hidden-weight 0")
        matched = [teacher_layer_of(layer, init_depth, teacher.config.num_hidden_layers) for layer in layers]

    if teacher is not None:
        teacher.to(params.runs_on()[0])

    def loss(model, batch, input_ids, mask):
        out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=teacher is not None)
        device = input_ids.device
        total = distillation_loss(params, out.logits.float(), teacher_logits[batch].to(device), labels[batch].to(device))
        if teacher is not None:
            with torch.no_grad():
                target = teacher(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            total = total + params.hidden_weight * hidden_state_loss(out.hidden_states, target, matched, mask)
        return total

    history = train(student, sequences, loss, params, progress, "distil_student", tokens.spec.pad_id, tokens.split("validation"))
    student.save_pretrained(model_folder(out), safe_serialization=True)
    (out / "student.json").write_text(json.dumps({"init": params.init, "init_layers": layers}))
    history["layers"] = layers  # the layers of the init model it kept
    history["num_layers"] = student.config.num_hidden_layers
    history["architecture"] = student.config.model_type
    history["augmented_examples"] = len(augmented)
    history["parameters"] = sum(p.numel() for p in student.parameters())
    return history


STAGE = Stage(
    name="distil_student",
    writes=MODEL,
    params=StudentParams,
    inputs=("tokens", "soft_labels", "augmented", "teacher"),
    build=build_student,
    libraries=("torch", "transformers"),
)
