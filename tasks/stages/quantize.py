"""Stage `quantize`: INT8 post-training quantization of the ONNX student with Intel
Neural Compressor (INC 3.7.1, the last release with the ONNX Runtime backend).

- dynamic: weights INT8 ahead of time, activations quantized on the fly; no data needed.
- static: activations too, with ranges calibrated on training sentences at their
  real lengths; QOperator (fused INT8 kernels) or QDQ (quantize/dequantize pairs).
- accuracy-aware (`accuracy_tolerance`): INC measures each candidate on the
  validation split and falls operators back to FP32 until the INT8 model loses at
  most that share of the FP32 accuracy, or gives up after `max_trials`.
INC's `fit` logs and swallows its own errors and returns None; here None is a failure.

Beside INC's model the stage reports onnxruntime's own `quantize_dynamic` on the same
FP32 graph (validation accuracy, size, batch-1 latency measured the same way): the
baseline INC has to beat.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from artifacts.stage import Progress, Stage
from tasks.data.batching import inference_batches, pad
from tasks.formats import ONNX, onnx_file, open_tokens
from tasks.measure.metrics import accuracy, interleaved_latency_ms, predictions
from tasks.onnx.session import onnx_logits, onnx_session


class QuantizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["ptq", "qat"] = Field("ptq", description="how the pipeline makes the INT8 student: ptq (this stage: INC post-training quantization of the ONNX student) or qat (stage qat_student: INC quantization-aware fine-tuning, QDQ ONNX; --qat-* parameters)")
    approach: Literal["dynamic", "static"] = Field("dynamic", description="INT8 approach: dynamic (no calibration) or static (calibrated activations)")
    quant_format: Literal["QOperator", "QDQ"] | None = Field(None, description="static only: fused INT8 operators (QOperator, the default) or quantize/dequantize pairs (QDQ)")
    calibration_samples: int = Field(256, ge=1, description="static only: training sentences used to calibrate activation ranges")
    calibration_batch_size: int = Field(16, ge=1, description="static only: sentences per calibration batch")
    seed: int = Field(42, description="seed for picking calibration sentences")
    accuracy_tolerance: float | None = Field(None, ge=0, lt=1, description="accuracy-aware tuning: largest relative loss of validation accuracy allowed, e.g. 0.01 (ops fall back to FP32 until met); none: no tuning")
    max_trials: int = Field(20, ge=1, le=1000, description="accuracy-aware tuning: most quantization candidates INC may try")
    baseline: bool = Field(True, description="also quantize with onnxruntime's quantize_dynamic and report it beside INC")
    latency_sentences: int = Field(100, ge=1, description="validation sentences timed at batch 1 for INC and the baseline")
    latency_rounds: int = Field(3, ge=1, description="turns in which FP32, INC and the baseline are timed one after another")

    @model_validator(mode="after")
    def _format_needs_static(self) -> "QuantizeParams":
        if self.approach == "dynamic" and self.quant_format is not None:
            raise ValueError("quant_format applies to static quantization only: drop it, or set approach to static")
        return self


class CalibrationBatches:
    """The loader INC expects: `batch_size` plus an iterable of (inputs, label)."""

    def __init__(self, sequences: list[np.ndarray], batch_size: int, pad_id: int):
        self.batch_size = batch_size
        self.batches = [pad(sequences, b, pad_id) for b in inference_batches([len(s) for s in sequences], batch_size)]

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


def validation_accuracy(sequences: list[np.ndarray], labels: np.ndarray, pad_id: int):
    """INC's eval_func: it hands over each candidate as an ONNX ModelProto."""
    import onnxruntime as ort

    def evaluate(model) -> float:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return accuracy(predictions(partial(onnx_logits, session), sequences, pad_id), labels)

    return evaluate


def quantize_onnx(params: QuantizeParams, model_path: Path, calibration: list[np.ndarray], out_path: Path, pad_id: int,
                  validation: tuple[list[np.ndarray], np.ndarray] | None = None) -> None:
    import onnx

    _, options = _inc()
    from neural_compressor import PostTrainingQuantConfig, quantization
    from neural_compressor.config import AccuracyCriterion, TuningCriterion

    tuning = params.accuracy_tolerance is not None
    config = PostTrainingQuantConfig(
        approach=params.approach,
        quant_format=params.quant_format or "QOperator",
        device="cpu",
        backend="default",
        domain="nlp",
        calibration_sampling_size=[params.calibration_samples],
        accuracy_criterion=AccuracyCriterion(criterion="relative", tolerable_loss=params.accuracy_tolerance or 0.01),
        tuning_criterion=TuningCriterion(max_trials=params.max_trials),
    )
    loader = CalibrationBatches(calibration, params.calibration_batch_size, pad_id) if params.approach == "static" else None
    eval_func = validation_accuracy(*validation, pad_id) if tuning and validation else None
    if tuning and eval_func is None:
        raise ValueError("accuracy-aware tuning needs the validation split")
    with tempfile.TemporaryDirectory(prefix="inc-") as workspace:
        options.workspace = workspace  # else INC writes ./nc_workspace/ wherever we run
        # Passing the ModelProto, not a path, stops INC from rewriting a config.json beside it.
        quantized = quantization.fit(model=onnx.load(str(model_path)), conf=config, calib_dataloader=loader,
                                     eval_func=eval_func)
    if quantized is None:
        reason = (f"no candidate within {params.accuracy_tolerance:.1%} relative accuracy loss in "
                  f"{params.max_trials} trials: raise --quantize-accuracy-tolerance or --quantize-max-trials"
                  if tuning else "see its 'Unexpected exception' log above")
        raise RuntimeError(f"Intel Neural Compressor produced no {params.approach} INT8 model (fit returned None: {reason})")
    quantized.save(str(out_path))


def ort_dynamic_baseline(model_path: Path, out_path: Path) -> None:
    """onnxruntime's own dynamic INT8 quantization with default settings, as users call it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing on the root logger at every call
    try:
        # Shape inference cannot type the outputs of onnxruntime's fused (com.microsoft)
        # kernels; they are all float, which is what this tells the quantizer.
        quantize_dynamic(str(model_path), str(out_path), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)


def build_int8(params: QuantizeParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    model_path = onnx_file(inputs["onnx"])
    tokens = open_tokens(inputs["tokens"])
    pad_id = tokens.spec.pad_id
    train_ids, _ = tokens.split("train")
    val_ids, val_labels = tokens.split("validation")
    rng = np.random.default_rng(params.seed)
    pick = rng.choice(len(train_ids), size=min(params.calibration_samples, len(train_ids)), replace=False)
    timed = [val_ids[i] for i in rng.choice(len(val_ids), size=min(params.latency_sentences, len(val_ids)), replace=False)]
    out_path = onnx_file(out)
    quantize_onnx(params, model_path, [train_ids[i] for i in pick], out_path, pad_id, (val_ids, val_labels))
    (out / "config.json").write_bytes((inputs["onnx"] / "config.json").read_bytes())
    with tempfile.TemporaryDirectory(prefix="ort-quant-") as scratch:
        models = {"fp32": model_path, "int8": out_path}
        if params.baseline:
            models["ort_quantize_dynamic"] = Path(scratch) / "model.onnx"
            ort_dynamic_baseline(model_path, models["ort_quantize_dynamic"])
        predictors = {name: partial(onnx_logits, onnx_session(path)) for name, path in models.items()}
        predicted = {name: predictions(predict, val_ids, pad_id) for name, predict in predictors.items()}
        latency = interleaved_latency_ms(predictors, timed, params.latency_rounds, warmup=5)
        measured = {name: {"validation_accuracy": round(accuracy(predicted[name], val_labels), 5), **latency[name]}
                    for name in models}
        if params.baseline:
            measured["ort_quantize_dynamic"]["size_bytes"] = models["ort_quantize_dynamic"].stat().st_size
    fp32, int8 = measured.pop("fp32"), measured.pop("int8")
    metrics = {
        "size_bytes": out_path.stat().st_size,
        "validation_accuracy_fp32": fp32["validation_accuracy"],
        "validation_accuracy_int8": int8["validation_accuracy"],
        "validation_agreement": round(float((predicted["fp32"] == predicted["int8"]).mean()), 5),
        "fp32": fp32,
        "int8": int8,
        **measured,
    }
    progress.info(f"quantize: {params.approach} INT8 validation accuracy {int8['validation_accuracy']:.4f} "
                  f"(FP32 {fp32['validation_accuracy']:.4f}), {out_path.stat().st_size / 1e6:.1f} MB, "
                  f"p50 {int8['latency_p50_ms']:.2f} ms (FP32 {fp32['latency_p50_ms']:.2f} ms)")
    if params.baseline:
        baseline = metrics["ort_quantize_dynamic"]
        progress.info(f"quantize: baseline onnxruntime quantize_dynamic validation accuracy "
                      f"{baseline['validation_accuracy']:.4f}, p50 {baseline['latency_p50_ms']:.2f} ms")
    return metrics


STAGE = Stage(
    name="quantize",
    writes=ONNX,
    params=QuantizeParams,
    inputs=("onnx", "tokens"),
    build=build_int8,
    libraries=("neural-compressor", "onnx", "onnxruntime"),
)
