"""Workload presets: the only thing that differs between the emotion and SST-2 flows."""

from __future__ import annotations

from flows.config import PipelineConfig

EMOTION_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]  # dair-ai/emotion ClassLabel order


def emotion() -> PipelineConfig:
    """dair-ai/emotion: fine-tune MiniLM-L6, distil into its layers 0, 2, 4, INT8."""
    return PipelineConfig.model_validate({
        "name": "emotion",
        "data": {"source": "dair-ai/emotion", "label_names": EMOTION_LABELS},
        "teacher": {"model": "minilm", "epochs": 3, "learning_rate": 5e-5},
        "student": {"epochs": 3, "learning_rate": 1e-4},
    })


def smoke(full: PipelineConfig) -> PipelineConfig:
    """The same DAG on a small slice with a tiny model: minutes, not hours."""
    return full.model_validate({
        **full.model_dump(),
        "data": {**full.data.model_dump(), "max_train_rows": 600, "max_eval_rows": 150},
        "teacher": {**full.teacher.model_dump(), "model": "tiny", "epochs": 3, "learning_rate": 2e-3, "batch_size": 16},
        "student": {**full.student.model_dump(), "epochs": 2, "learning_rate": 2e-3, "batch_size": 16},
        "quantize": {**full.quantize.model_dump(), "calibration_samples": 64},
        "evaluate": {**full.evaluate.model_dump(), "latency_sentences": 30, "warmup": 3},
        "export": {**full.export.model_dump(), "parity_examples": 16},
    })


PRESETS = {"emotion": emotion}
