"""Stage `quantize`: INT8 post-training quantization of the ONNX student with Intel
Neural Compressor (INC 3.7.1, the last release with the ONNX Runtime backend).

- dynamic: weights INT8 ahead of time, activations quantized on the fly; no data needed.
- static: activations too, with ranges calibrated on training sentences at their
  real lengths; QOperator (fused INT8 kernels) or QDQ (quantize/dequantize pairs).
INC's `fit` logs and swallows its own errors and returns None; here None is a failure.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from artifacts.stage import Progress, Stage
from tasks.batching import inference_batches, pad
from tasks.export import onnx_logits, onnx_session
from tasks.tokenize import read_tokens


class QuantizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    approach: Literal["dynamic", "static"] = Field("dynamic", description="INT8 approach: dynamic (no calibration) or static (calibrated activations)")
    quant_format: Literal["QOperator", "QDQ"] | None = Field(None, description="static only: fused INT8 operators (QOperator, the default) or quantize/dequantize pairs (QDQ)")
    calibration_samples: int = Field(256, ge=1, description="static only: training sentences used to calibrate activation ranges")
    calibration_batch_size: int = Field(16, ge=1, description="static only: sentences per calibration batch")
    seed: int = Field(42, description="seed for picking calibration sentences")

    @model_validator(mode="after")
    def _format_needs_static(self) -> "QuantizeParams":
        if self.approach == "dynamic" and self.quant_format is not None:
            raise ValueError("quant_format applies to static quantization only: drop it, or set approach to static")
        return self


class CalibrationBatches:
    """The loader INC expects: `batch_size` plus an iterable of (inputs, label)."""

    def __init__(self, sequences: list[np.ndarray], batch_size: int):
        self.batch_size = batch_size
        self.batches = [pad(sequences, b) for b in inference_batches([len(s) for s in sequences], batch_size)]

    def __iter__(self):
        for ids, mask in self.batches:
            yield {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, None


def _inc():
    """Import INC quietly, with its workspace out of the current directory."""
    os.environ.setdefault("LOGLEVEL", "WARNING")
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    warnings.filterwarnings("ignore", message=".*mapping.*deprecated.*")
    import neural_compressor
    from neural_compressor.config import options

    logging.getLogger("neural_compressor").setLevel(logging.ERROR)
    return neural_compressor, options


def quantize_onnx(params: QuantizeParams, model_path: Path, calibration: list[np.ndarray], out_path: Path) -> None:
    import onnx

    _, options = _inc()
    from neural_compressor import PostTrainingQuantConfig, quantization

    config = PostTrainingQuantConfig(
        approach=params.approach,
        quant_format=params.quant_format or "QOperator",
        device="cpu",
        backend="default",
        domain="nlp",
        calibration_sampling_size=[params.calibration_samples],
    )
    loader = CalibrationBatches(calibration, params.calibration_batch_size) if params.approach == "static" else None
    with tempfile.TemporaryDirectory(prefix="inc-") as workspace:
        options.workspace = workspace  # else INC writes ./nc_workspace/ wherever we run
        # Passing the ModelProto, not a path, stops INC from rewriting a config.json beside it.
        quantized = quantization.fit(model=onnx.load(str(model_path)), conf=config, calib_dataloader=loader)
    if quantized is None:
        raise RuntimeError(
            f"Intel Neural Compressor produced no {params.approach} INT8 model (fit returned None: "
            f"see its 'Unexpected exception' log above)"
        )
    quantized.save(str(out_path))


def accuracy_and_agreement(reference, candidate, sequences: list[np.ndarray], labels: np.ndarray) -> tuple[float, float, float]:
    ref_pred, cand_pred = np.empty(len(sequences), int), np.empty(len(sequences), int)
    for batch in inference_batches([len(s) for s in sequences], 64):
        ids, mask = (t.numpy() for t in pad(sequences, batch))
        ref_pred[batch] = onnx_logits(reference, ids, mask).argmax(1)
        cand_pred[batch] = onnx_logits(candidate, ids, mask).argmax(1)
    return float((ref_pred == labels).mean()), float((cand_pred == labels).mean()), float((ref_pred == cand_pred).mean())


def build_int8(params: QuantizeParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    model_path = inputs["onnx"] / "model.onnx"
    train_ids, _ = read_tokens(inputs["tokens"], "train")
    rng = np.random.default_rng(params.seed)
    pick = rng.choice(len(train_ids), size=min(params.calibration_samples, len(train_ids)), replace=False)
    out_path = out / "model.onnx"
    quantize_onnx(params, model_path, [train_ids[i] for i in pick], out_path)
    (out / "config.json").write_bytes((inputs["onnx"] / "config.json").read_bytes())
    val_ids, val_labels = read_tokens(inputs["tokens"], "validation")
    fp32_acc, int8_acc, agreement = accuracy_and_agreement(onnx_session(model_path), onnx_session(out_path), val_ids, val_labels)
    progress.info(f"quantize: {params.approach} INT8 validation accuracy {int8_acc:.4f} (FP32 {fp32_acc:.4f}), "
                  f"{out_path.stat().st_size / 1e6:.1f} MB")
    return {
        "size_bytes": out_path.stat().st_size,
        "validation_accuracy_fp32": round(fp32_acc, 5),
        "validation_accuracy_int8": round(int8_acc, 5),
        "validation_agreement": round(agreement, 5),
    }


STAGE = Stage(
    name="quantize",
    kind="onnx",
    params=QuantizeParams,
    inputs=("onnx", "tokens"),
    build=build_int8,
    libraries=("neural-compressor", "onnx", "onnxruntime"),
)
