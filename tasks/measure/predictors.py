"""Models as predictors `(ids, mask) -> logits`: PyTorch checkpoints and ONNX Runtime sessions.

What tasks/measure/metrics.py scores and times; evaluate and the benchmarks load models for
inference through here, with the same session options (tasks/onnx/session.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.formats import model_folder, onnx_file
from tasks.measure.metrics import Predict
from tasks.models.loading import load_trained
from tasks.onnx.session import onnx_logits, onnx_session


def torch_model_predictor(model) -> Predict:
    import torch

    def predict(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.float().numpy()

    return predict


def torch_predictor(artifact: Path) -> tuple[Predict, int]:
    """A model artifact's classifier, and its weights' size in bytes."""
    folder = model_folder(artifact)
    return torch_model_predictor(load_trained(folder)), (folder / "model.safetensors").stat().st_size


def onnx_predictor(artifact: Path, threads: int | None = None) -> tuple[Predict, int]:
    """An ONNX artifact's graph in ONNX Runtime, and its size in bytes."""
    path = onnx_file(artifact)
    session = onnx_session(path, threads)
    return (lambda ids, mask: onnx_logits(session, ids, mask)), path.stat().st_size

