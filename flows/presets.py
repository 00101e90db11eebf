"""Workload presets: the only thing that differs between the emotion and SST-2 flows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError

from flows.config import SECTIONS, PipelineConfig
from tasks.errors import DistilleryError
from tasks.precision import resolve_device, resolve_precision

EMOTION_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]  # dair-ai/emotion ClassLabel order
SST2_LABELS = ["negative", "positive"]


# The seed article's setup: a BERT-base-class teacher (the packaged all-mpnet-base-v2,
# 110M parameters) distilled through its soft labels into a small BERT student cut
# from the packaged all-MiniLM-L6-v2 (layers 0, 2, 4: 3 layers, hidden 384).
# `--teacher minilm --student-init teacher` is the quick path (a 22M teacher).
TEACHER = "mpnet"
STUDENT = {"init": "minilm", "layers": [0, 2, 4]}


def emotion() -> PipelineConfig:
    """dair-ai/emotion: fine-tune MPNet (3 epochs, lr 5e-5: a 1-epoch probe reached only
    91.0%), distil into a 3-layer MiniLM student, INT8."""
    return PipelineConfig.model_validate({
        "name": "emotion",
        "data": {"source": "dair-ai/emotion", "label_names": EMOTION_LABELS},
        "teacher": {"model": TEACHER, "epochs": 3, "learning_rate": 5e-5},
        "student": {**STUDENT, "epochs": 3, "learning_rate": 1e-4},
    })


def sst2() -> PipelineConfig:
    """GLUE SST-2: the test split has no labels, so dev is the test set and validation
    is a seeded tenth of train."""
    return PipelineConfig.model_validate({
        "name": "sst2",
        "data": {"source": "stanfordnlp/sst2", "label_names": SST2_LABELS, "splits": {"train": "train", "test": "dev"}},
        "teacher": {"model": TEACHER, "epochs": 1, "learning_rate": 5e-5},
        "student": {**STUDENT, "epochs": 2, "learning_rate": 1e-4},
    })


def smoke_sized(full: PipelineConfig) -> PipelineConfig:
    """The same DAG on a small slice with tiny models: minutes, not hours.

    The teacher is a tiny MPNet with a vocabulary of its own and the student a tiny
    BERT with MiniLM's, so every smoke run goes through the two-tokenizer path the
    full-size MPNet teacher takes.
    """
    return full.model_validate({
        **full.model_dump(),
        "data": {**full.data.model_dump(), "max_train_rows": 600, "max_eval_rows": 150},
        "teacher": {**full.teacher.model_dump(), "model": "tiny-mpnet", "epochs": 3, "learning_rate": 2e-3, "batch_size": 16},
        "student": {**full.student.model_dump(), "init": "tiny", "layers": None, "epochs": 2, "learning_rate": 2e-3, "batch_size": 16},
        "quantize": {**full.quantize.model_dump(), "calibration_samples": 64},
        "evaluate": {**full.evaluate.model_dump(), "latency_sentences": 30, "warmup": 3},
        "export": {**full.export.model_dump(), "parity_examples": 16},
    })


Workload = Literal["emotion", "sst2"]
PRESETS = {"emotion": emotion, "sst2": sst2}

Overrides = dict[str, dict[str, Any]]


def build_config(
    preset: PipelineConfig,
    data: str | None = None,
    smoke: bool = False,
    overrides: Overrides | None = None,
    describe: Any = None,
) -> PipelineConfig:
    """The preset, made smoke-sized if asked, with the data source and overrides applied.

    `describe(section, field)` names a parameter in error messages (the CLI passes its
    flag names); every problem is reported at once, as a DistilleryError.
    """
    base = smoke_sized(preset) if smoke else preset
    merged = base.model_dump()
    if data:
        merged["data"]["source"] = data
    for section, fields in (overrides or {}).items():
        if section not in SECTIONS or not isinstance(fields, dict):
            raise DistilleryError(f"unknown configuration section {section!r}: use one of {', '.join(SECTIONS)}")
        merged[section].update(fields)
    try:
        config = PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        name = describe or (lambda section, field: f"{section}.{field}")
        problems = []
        for error in exc.errors():
            loc = [str(part) for part in error["loc"]]
            where = name(loc[0], loc[1]) if len(loc) >= 2 and loc[0] in SECTIONS else ".".join(loc)
            problems.append(f"{where}: {error['msg']}")
        raise DistilleryError("invalid configuration: " + "; ".join(problems)) from None
    config.check()
    return resolve_hardware(config, describe or (lambda section, field: f"{section}.{field}"))


def resolve_hardware(config: PipelineConfig, describe: Any) -> PipelineConfig:
    """'auto' device and precision made concrete, once, so cache keys say what ran.

    Teacher inference (soft_labels) runs as the teacher was trained.
    """
    teacher_device = resolve_device(config.teacher.device, describe("teacher", "device"))
    student_device = resolve_device(config.student.device, describe("student", "device"))
    teacher = config.teacher.model_copy(update={
        "device": teacher_device,
        "precision": resolve_precision(config.teacher.precision, teacher_device, describe("teacher", "precision"))})
    student = config.student.model_copy(update={
        "device": student_device,
        "precision": resolve_precision(config.student.precision, student_device, describe("student", "precision"))})
    soft_labels = config.soft_labels.model_copy(update={"device": teacher.device, "precision": teacher.precision})
    return config.model_copy(update={"teacher": teacher, "student": student, "soft_labels": soft_labels})
