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
(an augmented text's hard label is the teacher's), weighted towards rare classes
(`class_balance`), and joined by layer-to-layer losses (tasks/training/layer_losses.py:
hidden states, attention, embeddings, each with its weight) on the rows where the
teacher's and the student's tokens line up (tasks/models/alignment.py). Only those losses
load and run the teacher; with logits alone it is never loaded. `layer_phase` gives
TinyBERT's two phases: the first share of the steps on the layer losses alone, the
rest on the logits.
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
from tasks.models.alignment import aligned_rows, piece_names, student_to_teacher_ids
from tasks.data.batching import pad
from tasks.data.encoding import encoder_of
from tasks.errors import DistilleryError
from tasks.formats import MODEL, model_folder, open_tokens, read_augmented, read_soft_labels, soft_labels_problem
from tasks.training.layer_losses import (StudentWithMaps, attention_loss, check_layer_map, embedding_loss, hidden_loss,
                                      uniform_layer_map)
from tasks.models.loading import check_layers, every_other_layer, load_classifier, load_trained, shrink
from tasks.training.loop import TrainParams, batch_plan, train

FROM_TEACHER = "teacher"


class StudentParams(TrainParams):
    init: str = Field(FROM_TEACHER, description="where the student starts: 'teacher' (a copy of the teacher's layers), 'minilm' (the packaged all-MiniLM-L6-v2), 'tiny', a local checkpoint folder or a Hub id")
    layers: list[int] | None = Field(None, description="layers of the init model the student keeps, e.g. [0, 2, 4]; default every other layer")
    loss: Literal["mse", "kl"] = Field("mse", description="distillation loss on logits: mse (Intel's BERT-Mini recipe) or kl with temperature")
    temperature: float = Field(2.0, gt=0, le=20, description="softening temperature for the kl loss")
    hard_label_weight: float = Field(0.0, ge=0, le=1, description="weight of cross-entropy on the true labels, mixed into the loss")
    hidden_weight: float = Field(0.0, ge=0, le=100, description="weight of hidden-state matching (MSE to the teacher layer of --student-layer-map, through a learned width map; needs tokens that align with the teacher's), added to the loss; 0: off")
    attention_weight: float = Field(0.0, ge=0, le=100, description="weight of attention matching (per head, KL from the teacher layer's attention; same head count, aligned tokens); 0: off")
    embedding_weight: float = Field(0.0, ge=0, le=100, description="weight of embedding-output matching (MSE through a learned width map; aligned tokens); 0: off")
    layer_map: list[int] | None = Field(None, description="the teacher layer each student layer matches, e.g. 3,7,11; default: the copied layers when cut from the teacher, else uniform (TinyBERT)")
    layer_phase: float = Field(0.0, ge=0, lt=1, description="TinyBERT's two phases: this share of the steps on the layer losses alone, then the logits alone; 0: all losses together")
    min_aligned_share: float = Field(0.5, gt=0, le=1, description="least share of distillation rows whose tokens must align with the teacher's for the layer losses to run")
    class_balance: float = Field(0.0, ge=0, le=1, description="weight rows by (inverse class frequency) ** this, so rare classes count more; 0: every row alike")
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


def layer_losses(params: StudentParams) -> bool:
    """Whether any loss looks inside the teacher (and so needs it loaded and aligned tokens)."""
    return max(params.hidden_weight, params.attention_weight, params.embedding_weight) > 0


def student_layers(params: StudentParams, init_depth: int) -> list[int]:
    what = "the teacher" if params.init == FROM_TEACHER else f"student init {params.init!r}"
    return check_layers(params.layers if params.layers is not None else every_other_layer(init_depth), init_depth, what)


def layer_map_of(params: StudentParams, kept_layers: list[int], teacher_depth: int) -> list[int]:
    """The teacher layer each student layer matches: --student-layer-map, else the copied layers
    (a student cut from the teacher), else uniform; refused when it fits neither model."""
    if params.layer_map is not None:
        chosen = params.layer_map
    elif params.init == FROM_TEACHER:
        chosen = kept_layers
    else:
        chosen = uniform_layer_map(len(kept_layers), teacher_depth)
    problems = check_layer_map(chosen, len(kept_layers), teacher_depth)
    if problems:
        raise DistilleryError(f"student layer map {chosen}: " + "; ".join(problems) + f"; e.g. --student-layer-map "
                              f"{','.join(map(str, uniform_layer_map(len(kept_layers), teacher_depth)))}")
    return chosen


def class_weights(labels: np.ndarray, num_labels: int, balance: float) -> torch.Tensor:
    """Per-class weight (count / (classes * class count)) ** balance, scaled so the rows average 1."""
    counts = np.bincount(labels, minlength=num_labels).astype(np.float64)
    weights = np.where(counts > 0, (len(labels) / (num_labels * np.maximum(counts, 1))) ** balance, 0.0)
    weights /= (weights[labels]).mean()
    return torch.tensor(weights, dtype=torch.float32)


def distillation_loss(params: StudentParams, student_logits, teacher_logits, labels, row_weights=None) -> torch.Tensor:
    """The loss on logits; `row_weights` (one per row, mean 1) weight the rows, e.g. by class."""
    if params.loss == "mse":
        soft = ((student_logits - teacher_logits) ** 2).mean(-1)
    else:
        t = params.temperature
        soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                        log_target=True, reduction="none").sum(-1) * t * t
    if params.hard_label_weight:
        hard = F.cross_entropy(student_logits, labels, reduction="none")
        soft = (1 - params.hard_label_weight) * soft + params.hard_label_weight * hard
    return soft.mean() if row_weights is None else (soft * row_weights).mean()


def initial_student(params: StudentParams, labels: list[str], teacher_artifact: Path):
    """The student before training, and the layers of the init model it kept."""
    base = load_trained(model_folder(teacher_artifact)) if params.init == FROM_TEACHER else load_classifier(params.init, labels, seed=params.seed)
    layers = student_layers(params, base.config.num_hidden_layers)
    return shrink(base, layers), layers


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
    row_weights = class_weights(labels, len(tokens.labels), params.class_balance)[labels] if params.class_balance else None
    teacher_logits, labels = torch.from_numpy(soft.logits), torch.from_numpy(labels)
    if augmented:
        progress.info(f"distil_student: {len(train_ids)} training and {len(augmented)} augmented texts")

    student, layers = initial_student(params, tokens.labels, inputs["teacher"])
    history: dict = {}
    layered = None
    if layer_losses(params):
        layered = LayerTargets(params, inputs, augmented, sequences, student, layers, progress)
        history["alignment"] = layered.report
    model = layered.trainable if layered else student
    phase_steps = int(params.layer_phase * len(batch_plan([len(s) for s in sequences], params))) if layered else 0

    def loss(model, batch, input_ids, mask, step):
        device = input_ids.device
        layer_phase = step <= phase_steps  # TinyBERT's first phase: layer losses alone
        inside = layered is not None and (layer_phase or not phase_steps)
        out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=inside,
                    output_attentions=inside and params.attention_weight > 0)
        total = torch.zeros((), device=device)
        if not layer_phase:
            weights = row_weights[batch].to(device) if row_weights is not None else None
            total = distillation_loss(params, out.logits.float(), teacher_logits[batch].to(device), labels[batch].to(device), weights)
        if inside:
            total = total + layered.loss(model, out, batch, device)
        return total

    history.update(train(model, sequences, loss, params, progress, "distil_student", tokens.spec.pad_id, tokens.split("validation")))
    student.save_pretrained(model_folder(out), safe_serialization=True)
    (out / "student.json").write_text(json.dumps({"init": params.init, "init_layers": layers,
                                                  "layer_map": layered.layer_map if layered else None}))
    history["layers"] = layers  # the layers of the init model it kept
    history["num_layers"] = student.config.num_hidden_layers
    history["architecture"] = student.config.model_type
    history["augmented_examples"] = len(augmented)
    history["parameters"] = sum(p.numel() for p in student.parameters())
    return history


class LayerTargets:
    """The teacher, its ids of the same texts, which rows align, and the layer losses against it."""

    def __init__(self, params: StudentParams, inputs: Mapping[str, Path], augmented: list[str],
                 sequences: list[np.ndarray], student, layers: list[int], progress: Progress):
        self.params = params
        student_tokens, teacher_tokens = open_tokens(inputs["tokens"]), open_tokens(inputs["teacher_tokens"])
        if student_tokens.spec.texts_sha256.get("train") != teacher_tokens.spec.texts_sha256.get("train"):
            raise RuntimeError("distil_student: the teacher's and the student's tokens hold different training texts; "
                               "they must be made from the same dataset artifact")
        teacher_encoder = encoder_of(teacher_tokens)
        self.teacher_sequences = teacher_tokens.split("train")[0] + teacher_encoder.encode(augmented)
        self.teacher_pad = teacher_tokens.spec.pad_id
        mapping = student_to_teacher_ids(piece_names(teacher_encoder.tokenizer), piece_names(encoder_of(student_tokens).tokenizer))
        self.aligned = aligned_rows(self.teacher_sequences, sequences, mapping)
        share = float(self.aligned.mean()) if len(self.aligned) else 0.0
        self.report = {"aligned_rows": int(self.aligned.sum()), "rows": len(self.aligned), "aligned_share": round(share, 5)}
        progress.info(f"distil_student: {self.report['aligned_rows']} of {len(self.aligned)} rows align with the "
                      f"teacher's tokens ({share:.1%}); the layer losses use those")
        if share < params.min_aligned_share:
            raise DistilleryError(
                f"layer-to-layer distillation: only {share:.1%} of the rows tokenize into the teacher's pieces "
                f"(--student-min-aligned-share {params.min_aligned_share:g}); the two tokenizers cut text differently. "
                f"Use --student-hidden-weight 0 --student-attention-weight 0 --student-embedding-weight 0")
        teacher = load_trained(model_folder(inputs["teacher"]))
        if params.attention_weight > 0:
            for model in (teacher, student):
                model.set_attn_implementation("eager")  # the fused kernels return no attention probabilities
            heads = (teacher.config.num_attention_heads, student.config.num_attention_heads)
            if heads[0] != heads[1]:
                raise DistilleryError(f"attention matching compares head by head: the teacher has {heads[0]} heads, the "
                                      f"student {heads[1]}; use --student-attention-weight 0")
        self.layer_map = layer_map_of(params, layers, teacher.config.num_hidden_layers)
        self.report["layer_map"] = self.layer_map
        self.teacher = teacher.to(params.runs_on()[0])
        self.trainable = StudentWithMaps(student, student.config.hidden_size, teacher.config.hidden_size,
                                         embeddings=params.embedding_weight > 0)

    def loss(self, model: StudentWithMaps, out, batch: np.ndarray, device) -> torch.Tensor:
        rows = np.flatnonzero(self.aligned[batch])
        if not len(rows):
            return torch.zeros((), device=device)
        teacher_ids, mask = (t.to(device) for t in pad(self.teacher_sequences, batch[rows], self.teacher_pad))
        length = teacher_ids.shape[1]  # aligned rows are as long for both, so their tokens fit in both paddings
        with torch.no_grad():
            target = self.teacher(input_ids=teacher_ids, attention_mask=mask, output_hidden_states=True,
                                  output_attentions=self.params.attention_weight > 0)
        index = torch.as_tensor(rows, device=device)
        total = torch.zeros((), device=device)
        if self.params.hidden_weight or self.params.embedding_weight:
            hidden = [h[index, :length] for h in out.hidden_states]
            if self.params.hidden_weight:
                total = total + self.params.hidden_weight * hidden_loss(hidden, target.hidden_states, self.layer_map,
                                                                        model.hidden_map, mask)
            if self.params.embedding_weight:
                total = total + self.params.embedding_weight * embedding_loss(hidden, target.hidden_states,
                                                                              model.embedding_map, mask)
        if self.params.attention_weight:
            attentions = [a[index, :, :length, :length] for a in out.attentions]
            total = total + self.params.attention_weight * attention_loss(attentions, target.attentions, self.layer_map, mask)
        return total


STAGE = Stage(
    name="distil_student",
    writes=MODEL,
    params=StudentParams,
    inputs=("tokens", "soft_labels", "augmented", "teacher", "teacher_tokens"),
    build=build_student,
    libraries=("torch", "transformers"),
)
