"""Stage `soft_labels`: the teacher's logits on the distillation set, computed once.

The distillation set is the train split followed by the augmented texts. The teacher
reads them with its own tokenizer (the train ids of its tokens artifact, and the
augmented texts encoded with the same tokenizer), so a teacher of another make and
vocabulary than the student teaches it through texts, never through shared ids.
The artifact is row-aligned with those texts and carries their digest;
`distil_student` and every cache hit check it (`soft_labels_problem`), so logits are
never paired with other texts. Because this stage is cached, a change to a student
parameter costs no teacher inference.

It is the one long loop that is not training (8 minutes for emotion's augmented set on
two cores, an hour for SST-2's on one), so it checkpoints like training does: the texts
are read in chunks of whole batches, and the logits so far are saved between chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.data.encoding import encoder_of
from tasks.formats import (SOFT_LABELS, distillation_texts_digest, model_folder, open_tokens, read_augmented,
                           soft_labels_problem, write_soft_labels)
from tasks.models.loading import load_trained
from tasks.training.device import resolve_device, resolve_precision
from tasks.training.loop import predict_logits

CHUNK_BATCHES = 16  # teacher batches between chances to checkpoint


class SoftLabelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(128, ge=1, le=4096, description="texts per teacher forward pass (length-sorted, padded per batch)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="teacher inference precision; the pipeline sets it to the teacher's")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the teacher runs; the pipeline sets it to the teacher's")


def teacher_logits(teacher, sequences: list[np.ndarray], pad_id: int, batch_size: int, precision: str, device: str,
                   progress: Progress) -> np.ndarray:
    """predict_logits over the texts in chunks, resuming after the last checkpointed chunk.

    Chunks are consecutive runs of whole batches of the one length-sorted order that
    predict_logits itself uses, so every batch, and so every logit, is the one a single
    call over all texts gives: a resumed run writes the same bytes as one never stopped.
    """
    order = np.argsort([len(s) for s in sequences], kind="stable")
    span = CHUNK_BATCHES * batch_size
    chunks = [order[i:i + span] for i in range(0, len(order), span)]
    out = np.zeros((0, 0), dtype=np.float32)
    first = 0
    checkpoints = progress.checkpoints
    resumed = checkpoints.latest() if checkpoints else None
    if resumed:
        first, folder = resumed
        out = np.load(folder / "logits.npy")
        progress.info(f"soft_labels: resumed from the checkpoint at chunk {first}/{len(chunks)}")
    for done, chunk in enumerate(chunks[first:], start=first + 1):
        logits = predict_logits(teacher, [sequences[i] for i in chunk], pad_id, batch_size, precision=precision, device=device)
        if not out.size:
            out = np.zeros((len(sequences), logits.shape[1]), dtype=np.float32)
        out[chunk] = logits
        progress.step("soft_labels", done, len(chunks))
        if checkpoints and checkpoints.due() and done < len(chunks):
            checkpoints.save(done, lambda folder: np.save(folder / "logits.npy", out))
            progress.info(f"soft_labels: checkpoint saved at chunk {done}/{len(chunks)}")
    return out


def build_soft_labels(params: SoftLabelParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    tokens = open_tokens(inputs["tokens"])
    train_ids, train_labels = tokens.split("train")
    augmented, sources = read_augmented(inputs["augmented"])
    sequences = train_ids + encoder_of(tokens).encode(augmented)
    teacher = load_trained(model_folder(inputs["teacher"]))
    progress.info(f"soft_labels: teacher logits for {len(train_ids)} training and {len(augmented)} augmented texts")
    device = resolve_device(params.device)
    precision = resolve_precision(params.precision, device, "precision")
    logits = teacher_logits(teacher, sequences, tokens.spec.pad_id, params.batch_size, precision, device, progress)
    predicted = logits.argmax(1)
    stats = {
        "device": device,
        "precision": precision,
        "teacher_forward_batches": int(np.ceil(len(sequences) / params.batch_size)),
        "teacher_train_accuracy": round(float((predicted[: len(train_ids)] == train_labels).mean()), 5),
        # How often the teacher's label for a variant differs from its source's gold label:
        # the share of "new" supervision the augmentation brings (and of noise, if too high).
        "augmented_label_differs_from_source": round(float((predicted[len(train_ids):] != train_labels[sources]).mean()), 4)
        if len(augmented) else 0.0,
    }
    write_soft_labels(out, logits, distillation_texts_digest(tokens.spec.texts_sha256["train"], augmented), len(train_ids), stats)
    return {"rows": len(sequences), **stats}


def validate(artifact: Path, inputs: Mapping[str, Path]) -> str:
    return soft_labels_problem(artifact, inputs["tokens"], inputs["augmented"])


STAGE = Stage(
    name="soft_labels",
    writes=SOFT_LABELS,
    params=SoftLabelParams,
    inputs=("tokens", "teacher", "augmented"),
    build=build_soft_labels,
    libraries=("torch", "transformers"),
    validate=validate,
)
