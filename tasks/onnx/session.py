"""ONNX Runtime sessions, with the same options everywhere: export's parity check,
quantize, QAT, evaluate and predict.

Kept apart from tasks/measure/predictors.py (which also loads PyTorch models) so that the
stages that only run ONNX graphs do not carry the model-loading code in their
fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0]
