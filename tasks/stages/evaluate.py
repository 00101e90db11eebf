"""Stage `evaluate`: quality, speed and size of the teacher, the student and the INT8 student.

Each model is measured on its own tokens of the same test rows: the teacher on the
teacher's, the student and its INT8 model on the student's (tasks/measure/metrics.py does
all the scoring and timing). Speed is batch-1 latency (p50/p95) over the same test
sentences at their real lengths, the way a service sees single requests, after a
warm-up; all models run on the same threads and are timed in turns.

It also scores the teacher and the INT8 student on validation and says how far the
student falls short there (`shortfall`): validation, not test, because it is the split
a user may act on (retrain, change the recipe) without spoiling the test figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.formats import EVALUATION, open_tokens
from tasks.measure.metrics import interleaved_latency_ms, quality, shortfall
from tasks.measure.predictors import onnx_predictor, torch_predictor

MODELS = ("teacher", "student", "student_int8")


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_sentences: int = Field(200, ge=1, description="test sentences timed one at a time for batch-1 latency")
    warmup: int = Field(10, ge=0, description="untimed calls before timing")
    rounds: int = Field(3, ge=1, description="turns in which the models are timed one after another; each reports its median round")
    threads: int | None = Field(None, ge=1, description="CPU threads for every model (default: all cores)")
    seed: int = Field(42, description="seed for picking the latency sentences")
    shortfall_accuracy_points: float = Field(1.0, ge=0, le=100, description="flag the INT8 student when its validation accuracy is more than this many points below the teacher's")
    shortfall_class_f1: float = Field(0.10, ge=0, le=1, description="flag the INT8 student when any class's validation F1 is more than this below the teacher's")


def build_evaluation(params: EvaluateParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    threads = params.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tokens = {"teacher": open_tokens(inputs["teacher_tokens"]), "student": open_tokens(inputs["student_tokens"])}
        if tokens["teacher"].spec.texts_sha256.get("test") != tokens["student"].spec.texts_sha256.get("test"):
            raise RuntimeError("evaluate: the teacher's and the student's tokens hold different test texts; "
                               "they must be made from the same dataset artifact")
        tokens["student_int8"] = tokens["student"]
        test = {name: t.split("test") for name, t in tokens.items()}
        labels = test["student"][1]
        names = tokens["student"].labels
        rng = np.random.default_rng(params.seed)
        rows = rng.choice(len(labels), size=min(params.latency_sentences, len(labels)), replace=False)
        predictors = {
            "teacher": torch_predictor(inputs["teacher"]),
            "student": torch_predictor(inputs["student"]),
            "student_int8": onnx_predictor(inputs["student_int8"], threads),
        }
        timed = {name: [test[name][0][i] for i in rows] for name in predictors}
        latency = interleaved_latency_ms({name: predict for name, (predict, _) in predictors.items()}, timed,
                                         params.rounds, params.warmup)
        report: dict = {"labels": names, "test_rows": len(labels), "threads": threads, "models": {}}
        for name, (predict, size) in predictors.items():
            scores = quality(predict, test[name][0], labels, len(names), tokens[name].spec.pad_id)
            report["models"][name] = {**scores, **latency[name], "size_bytes": size,
                                      "tokenizer": tokens[name].spec.tokenizer}
            m = report["models"][name]
            progress.info(f"evaluate: {name} accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} "
                          f"p50 {m['latency_p50_ms']:.2f} ms")
        validation = {name: tokens[name].split("validation") for name in ("teacher", "student_int8")}
        on_validation = {name: quality(predictors[name][0], validation[name][0], validation[name][1], len(names),
                                       tokens[name].spec.pad_id) for name in validation}
        report["shortfall"] = {"split": "validation", "rows": len(validation["teacher"][1]),
                               "teacher": {k: on_validation["teacher"][k] for k in ("accuracy", "macro_f1", "per_class_f1")},
                               "student_int8": {k: on_validation["student_int8"][k] for k in ("accuracy", "macro_f1", "per_class_f1")},
                               **shortfall(on_validation["teacher"], on_validation["student_int8"], names,
                                           params.shortfall_accuracy_points, params.shortfall_class_f1)}
        if report["shortfall"]["flagged"]:
            progress.info("evaluate: WARNING the INT8 student falls short of its teacher on validation: "
                          + "; ".join(report["shortfall"]["reasons"]))
    finally:
        torch.set_num_threads(previous_threads)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    return {name: {k: v for k, v in m.items() if k != "confusion_matrix"} for name, m in report["models"].items()}


STAGE = Stage(
    name="evaluate",
    writes=EVALUATION,
    params=EvaluateParams,
    inputs=("teacher_tokens", "teacher", "student_tokens", "student", "student_int8"),
    build=build_evaluation,
    libraries=("torch", "transformers", "onnxruntime"),
)
