"""Stage `evaluate`: quality, speed and size of the teacher, the student and the INT8 student.

Quality on the whole test split through a local `evaluate` metric module. Speed as
batch-1 latency (p50/p95) over test sentences at their real lengths, the way a
service sees single requests, after a warm-up; all models run on the same threads
and are timed in turns (`tasks.timing.interleaved_latency_ms`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.export import onnx_logits, onnx_session
from tasks.models import load_trained
from tasks.timing import Predict, interleaved_latency_ms, predictions
from tasks.tokenize import read_tokens

METRIC_MODULE = Path(__file__).parent / "metrics" / "classification_report"
MODELS = ("teacher", "student", "student_int8")

class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_sentences: int = Field(200, ge=1, description="test sentences timed one at a time for batch-1 latency")
    warmup: int = Field(10, ge=0, description="untimed calls before timing")
    rounds: int = Field(3, ge=1, description="turns in which the models are timed one after another; each reports its median round")
    threads: int | None = Field(None, ge=1, description="CPU threads for every model (default: all cores)")
    seed: int = Field(42, description="seed for picking the latency sentences")


def torch_predictor(folder: Path) -> tuple[Predict, int]:
    model = load_trained(folder / "model")

    def predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()

    return predict, (folder / "model" / "model.safetensors").stat().st_size


def onnx_predictor(folder: Path, threads: int) -> tuple[Predict, int]:
    session = onnx_session(folder / "model.onnx", threads)
    return (lambda ids, mask: onnx_logits(session, ids, mask)), (folder / "model.onnx").stat().st_size


def build_report(params: EvaluateParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    import evaluate  # ~8 s to import; only this stage needs it

    threads = params.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        names = json.loads((inputs["tokens"] / "labels.json").read_text())["names"]
        test_ids, test_labels = read_tokens(inputs["tokens"], "test")
        rng = np.random.default_rng(params.seed)
        timed = [test_ids[i] for i in rng.choice(len(test_ids), size=min(params.latency_sentences, len(test_ids)), replace=False)]
        metric = evaluate.load(str(METRIC_MODULE))
        predictors = {
            "teacher": torch_predictor(inputs["teacher"]),
            "student": torch_predictor(inputs["student"]),
            "student_int8": onnx_predictor(inputs["student_int8"], threads),
        }
        latency = interleaved_latency_ms({name: predict for name, (predict, _) in predictors.items()}, timed,
                                         params.rounds, params.warmup)
        report: dict = {"labels": names, "test_rows": len(test_ids), "threads": threads, "models": {}}
        for name, (predict, size) in predictors.items():
            scores = metric.compute(predictions=predictions(predict, test_ids), references=test_labels, num_labels=len(names))
            report["models"][name] = {**scores, **latency[name], "size_bytes": size}
            m = report["models"][name]
            progress.info(f"evaluate: {name} accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} "
                          f"p50 {m['latency_p50_ms']:.2f} ms")
    finally:
        torch.set_num_threads(previous_threads)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    return {name: {k: v for k, v in m.items() if k != "confusion_matrix"} for name, m in report["models"].items()}


STAGE = Stage(
    name="evaluate",
    kind="report",
    params=EvaluateParams,
    inputs=("tokens", "teacher", "student", "student_int8"),
    build=build_report,
    libraries=("torch", "transformers", "onnxruntime", "evaluate"),
    extra_files=(METRIC_MODULE / "classification_report.py",),
)
