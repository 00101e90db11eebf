"""Workload presets: the only thing that differs between the emotion and SST-2 flows.

A workload is a name and a preset. `emotion` and `sst2` fix their data source and
label set; `generic` fixes neither (the label set is read off the training split),
and its runs need a name of their own (`--name reviews`). The name is what the store
and Prefect know a workload by (aliases, report, run name, tags); a preset's own name
belongs to that preset, so a run of other data never moves its aliases.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError

from flows.config import SECTIONS, PipelineConfig, check_workload_name
from tasks.data.sources import resolve_data_revision
from tasks.errors import DistilleryError
from tasks.stages.judge import GateParams
from tasks.training.device import resolve_device, resolve_precision

EMOTION_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]  # dair-ai/emotion ClassLabel order
SST2_LABELS = ["negative", "positive"]


# The seed article's setup: a BERT-base-class teacher (the packaged all-mpnet-base-v2,
# 110M parameters) distilled through its soft labels into a small BERT student cut
# from the packaged all-MiniLM-L6-v2 (layers 0, 2, 4: 3 layers, hidden 384).
# `--teacher minilm --student-init teacher` is the quick path (a 22M teacher).
TEACHER = "mpnet"
STUDENT = {"init": "minilm", "layers": [0, 2, 4]}

# The schedule adapts to the data set's size (what it does for 5k, 16k and 60k rows is in
# docs/reference.md): augmentation aims at 48,000 distillation texts (emotion's 16,000
# tweets and two variants each), at most 8 variants per text; the teacher trains at least
# 600 and at most 2,000 steps, the student at least 2,000; both keep their best weights of
# a few validation checks. No patience: emotion's whole MPNet teacher rose at each of its 3
# checks (93.50, 94.10, 94.45% on validation, bench/results/teacher-freeze-emotion.md), so
# stopping early would have cut nothing there.
SCHEDULE = {
    "teacher": {"min_steps": 600, "max_steps": 2000, "validations": 3},
    "augment": {"min_texts": 48_000, "max_copies": 8},
    "student": {"min_steps": 2000, "validations": 4},
}


def emotion() -> PipelineConfig:
    """dair-ai/emotion: fine-tune MPNet (3 epochs, lr 5e-5: a 1-epoch probe reached only
    91.0%), distil into a 3-layer MiniLM student on the teacher's soft labels of the
    tweets and two augmented variants of each, INT8.

    Chosen on validation (bench/results/recipe-emotion.md, FP32 student): two variants
    per tweet and 1.5 epochs over the tripled set 93.50%; no augmentation, 3 epochs
    93.20%; KL with hard labels 92.85%; 2 layers 92.60%.

    The teacher trains every layer (`frozen_layers` 0). Measured on this schedule, bf16,
    one seed (bench/results/teacher-freeze-emotion.md, AMD EPYC Zen 5, one thread): 6
    frozen layers step 2.25x faster but reach 92.70% on validation against 94.45%, 8
    frozen 3.3x faster and 89.90%: far outside the ~0.3 points a default may give up.
    """
    return PipelineConfig.model_validate({
        "name": "emotion",
        "data": {"source": "dair-ai/emotion", "label_names": EMOTION_LABELS},
        "teacher": {"model": TEACHER, "epochs": 3, "learning_rate": 5e-5, **SCHEDULE["teacher"]},
        "augment": {"copies": 2, **SCHEDULE["augment"]},
        "student": {**STUDENT, "epochs": 1.5, "learning_rate": 1e-4, **SCHEDULE["student"]},
        # Floors of the promotion gate: ~3 points under what the defaults reach (93.2-93.5%, macro-F1 ~0.90).
        "gate": {"min_accuracy": 0.90, "min_macro_f1": 0.85},
    })


def sst2() -> PipelineConfig:
    """GLUE SST-2: the test split has no labels, so dev is the test set and validation
    is a seeded tenth of train.

    Half an epoch of MPNet over the 60,614 training phrases (30,300 examples): a probe
    reached 92.4% on dev after one epoch over 20,000 of them, and a full epoch costs
    about an hour of teacher training on a 2-core machine.

    Chosen on validation (bench/results/recipe-sst2.md, FP32 student): two augmented
    variants per phrase and 1 epoch over the tripled set 93.78%; no augmentation,
    2 epochs 93.47%.

    The student keeps emotion's three layers. All six of all-MiniLM-L6-v2
    (`--student-layers 0,1,2,3,4,5`) reach 94.04% on validation against 93.45%
    (INT8, two seeds) and 89.74% on dev against 88.65%, but run at 25x the teacher's
    batch-1 speed, half the 50x the preset promises (docs/experiments.md).
    """
    return PipelineConfig.model_validate({
        "name": "sst2",
        "data": {"source": "stanfordnlp/sst2", "label_names": SST2_LABELS, "splits": {"train": "train", "test": "dev"}},
        "teacher": {"model": TEACHER, "epochs": 0.5, "learning_rate": 5e-5, **SCHEDULE["teacher"]},
        "augment": {"copies": 2, **SCHEDULE["augment"]},
        "student": {**STUDENT, "epochs": 1, "learning_rate": 1e-4, **SCHEDULE["student"]},
        # Floors of the promotion gate: ~3 points under what the defaults reach on dev (88.7%).
        "gate": {"min_accuracy": 0.85, "min_macro_f1": 0.85},
    })


GENERIC = "generic"
NO_SOURCE = ""  # the generic preset's data source: --data must give one


# Class-balanced distillation rows for data sets of unknown balance: without it a class of
# under 1% of the rows collapsed (Reuters-R8's grain: test F1 0.947 -> 0.000). Chosen on
# validation (bench/results/generality.md, docs/experiments.md): TREC +0.69 points / +0.048
# macro-F1, Reuters-R8 +0.54 / +0.145; on emotion it cost 0.33 points (two seeds), so the
# emotion and SST-2 presets, each chosen on its own validation, keep it off.
GENERIC_CLASS_BALANCE = 0.5
# TREC and Reuters-R8 INT8 students land within 1 point of their teachers (bench/results/generality.md).
GENERIC_BELOW_TEACHER = 0.05


def generic() -> PipelineConfig:
    """Any labelled text data set: the emotion preset's models, hyper-parameters and
    adaptive schedule (SCHEDULE), class-balanced distillation (GENERIC_CLASS_BALANCE), no
    data source and no label names (they are read off the training split, sorted)."""
    base = emotion()
    dumped = base.model_dump()
    # No absolute floors: what a data set allows is unknown, but its own teacher shows it, so the
    # INT8 student may be at most GENERIC_BELOW_TEACHER below it (the 77-class intent run's student,
    # 8.9 points under its teacher, would be refused); the gate still compares each new model with
    # the production one (--gate-min-accuracy sets an absolute floor).
    return base.model_validate({**dumped, "name": GENERIC, "data": {"source": NO_SOURCE, "label_names": None},
                                "student": {**dumped["student"], "class_balance": GENERIC_CLASS_BALANCE},
                                "gate": GateParams(below_teacher=GENERIC_BELOW_TEACHER).model_dump()})


def smoke_sized(full: PipelineConfig) -> PipelineConfig:
    """The same DAG on a small slice with tiny models: minutes, not hours.

    The teacher is a tiny MPNet with a vocabulary of its own and the student a tiny
    BERT with MiniLM's, so every smoke run goes through the two-tokenizer path the
    full-size MPNet teacher takes.
    """
    return full.model_validate({
        **full.model_dump(),
        "data": {**full.data.model_dump(), "max_train_rows": 600, "max_eval_rows": 150},
        "teacher": {**full.teacher.model_dump(), "model": "tiny-mpnet", "epochs": 3, "learning_rate": 2e-3, "batch_size": 16,
                    "min_steps": 0},
        "student": {**full.student.model_dump(), "init": "tiny", "layers": None, "epochs": 2, "learning_rate": 2e-3, "batch_size": 16,
                    "min_steps": 0},
        # Augmentation off: it triples the student's data, and tests/test_stages.py covers it.
        "augment": {**full.augment.model_dump(), "copies": 0, "min_texts": 0},
        "quantize": {**full.quantize.model_dump(), "calibration_samples": 64},
        "evaluate": {**full.evaluate.model_dump(), "latency_sentences": 30, "warmup": 3},
        "export": {**full.export.model_dump(), "parity_examples": 16},
        # Tiny models' accuracy means nothing: no floors, and any loss against production is
        # tolerated. The gate still runs (judge, the paired test, the decision, the promotion).
        "gate": {**full.gate.model_dump(), "min_accuracy": 0.0, "min_macro_f1": 0.0, "below_teacher": None,
                 "tolerance": 1.0, "macro_f1_tolerance": 1.0, "class_f1_drop": 1.0},
    })


Workload = Literal["emotion", "sst2", "generic"]  # a preset's name; the flow's `workload` parameter
PRESETS = {"emotion": emotion, "sst2": sst2, GENERIC: generic}

Overrides = dict[str, dict[str, Any]]


SMOKE_SUFFIX = "-smoke"


def smoke_name(name: str) -> str:
    """The name a smoke run of workload `name` goes by: its aliases, promotion log, report, Prefect
    artifacts and tags are `<name>-smoke`'s, so a tiny model never becomes `<name>/latest` or
    `<name>/production`, whoever starts it (`make smoke`, `--smoke`, `--param smoke=true`)."""
    return check_workload_name(name + SMOKE_SUFFIX)


def workload_name(preset: str, name: str | None) -> str:
    """The name a run of `preset` goes by: `name`, checked, else the preset's own.

    Refused: a name that is no valid alias, the generic preset without a name, and a
    preset's name taken by another preset (it would move that preset's aliases).
    """
    if name is None or name == "":
        if preset == GENERIC:
            raise DistilleryError("the generic preset needs a workload name: pass --name NAME (e.g. --name reviews), "
                                  "which names its store aliases NAME/latest and NAME/report")
        return preset
    check_workload_name(name)
    if name.endswith(SMOKE_SUFFIX):
        raise DistilleryError(f"workload name {name!r} ends in {SMOKE_SUFFIX!r}, which names smoke runs: a full run under it "
                              f"would share their aliases. Pick another name, or run with --smoke (which names the run "
                              f"{name!r} by itself from --name {name.removesuffix(SMOKE_SUFFIX)})")
    if name in PRESETS and name != preset:
        raise DistilleryError(
            f"workload name {name!r} is the {name} preset's: a run of the {preset} preset under it would move "
            f"{name}/latest and {name}/report, which predict, status and the benchmarks read as the {name} "
            f"workload, to other data. Pick a name of its own (e.g. --name my-{name}), or run the {name} preset "
            f"itself with --preset {name}")
    return name


def build_config(
    preset: PipelineConfig,
    data: str | None = None,
    smoke: bool = False,
    overrides: Overrides | None = None,
    describe: Any = None,
    name: str | None = None,
) -> PipelineConfig:
    """The preset, made smoke-sized if asked, with the data source, overrides and workload name applied.

    `describe(section, field)` names a parameter in error messages (the CLI passes its
    flag names); every problem is reported at once, as a DistilleryError.
    """
    base = smoke_sized(preset) if smoke else preset
    merged = base.model_dump()
    merged["name"] = smoke_name(workload_name(preset.name, name)) if smoke else workload_name(preset.name, name)
    if data:
        merged["data"]["source"] = data
    if merged["data"]["source"] == NO_SOURCE:
        raise DistilleryError(f"the {preset.name} preset has no data source: pass --data PATH (or DISTILLERY_DATA=PATH), "
                              f"a folder with train and test files (.csv, .tsv, .jsonl, .parquet, .txt), or a Hub id")
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
    config = config.model_copy(update={"data": resolve_data_revision(config.data)})  # a Hub source pinned to its commit
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
