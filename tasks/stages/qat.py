"""Stage `qat_student`: quantization-aware fine-tuning of the student, out as INT8 ONNX.

The path of Intel's bert-tiny emotion sample, and the mechanism optimum-intel's
INCTrainer wrapped before upstream removed it: Intel Neural Compressor's
`prepare_compression(model, QuantizationAwareTrainingConfig())` puts fake-quantize
modules around the model's Linear, LayerNorm and Embedding layers (it cannot FX-trace
a whole BERT, so it traces those sub-modules one by one), and the student is then
fine-tuned on the true labels with INT8 rounding in the loop.

INC's own ending, `on_train_end()`, converts to torch.ao INT8 modules that no ONNX
exporter accepts. So the fake-quantized model is exported instead, before that
conversion: every fake-quantize becomes an ONNX QuantizeLinear/DequantizeLinear pair
(QDQ), which onnxruntime fuses into integer kernels (MatMulIntegerToFloat, QGemm,
QLinearAdd) when it loads the graph. Two details make that export work:
- INC's fused observer-and-quantize modules have no ONNX symbolic; each is replaced
  by a plain fake-quantize with its learned, frozen scale and zero point, and
  per-tensor ones get 0-d scales (onnxruntime's QLinearAdd fusion rejects shape [1]);
- embeddings are quantized per row with floating-point zero points, which ONNX Q/DQ
  cannot express, so they are stored as uint8 codes with a per-row scale and offset.
The exporter writes FP32 weights behind QuantizeLinear nodes; folding those into
INT8 initializers makes the file as small as the model it describes.

The ONNX model is published only if it makes the same predictions as the PyTorch
fake-quantized model on most validation sentences, batched with padding (`parity_agreement`).
Its validation accuracy is recorded under the key `quantize` uses
(`validation_accuracy_int8`), so PTQ and QAT are compared on the same split, measured
the same way, without touching test.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from typing import Literal

from pydantic import Field

from artifacts.stage import Progress, Stage
from tasks.formats import ONNX, model_folder, onnx_file, open_tokens
from tasks.measure.metrics import accuracy, predictions
from tasks.data.batching import inference_batches, pad
from tasks.models.loading import load_trained
from tasks.onnx.graph import export
from tasks.onnx.session import onnx_logits, onnx_session
from tasks.training.loop import TrainParams, classification_loss, predict_logits, train


class QATParams(TrainParams):
    epochs: float = Field(1, gt=0, le=100, description="passes over the training split with fake quantization in the loop")
    learning_rate: float = Field(2e-5, gt=0, lt=1, description="peak AdamW learning rate (small: the student is trained already)")
    opset: int = Field(17, ge=14, le=20, description="ONNX opset of the QDQ export")
    # Fake quantization rounds to INT8 steps that bfloat16 cannot hold.
    precision: Literal["fp32"] = Field("fp32", description="QAT trains in FP32 only")
    # INC's fake-quantize modules and the QDQ export are set up for the CPU.
    device: Literal["cpu"] = Field("cpu", description="QAT trains on the CPU")
    # Integer kernels round where PyTorch's float fake quantization does not, and the
    # difference compounds over layers: near-ties flip (96.9% agreement on the full
    # emotion run). A broken export agrees far less than 95%.
    parity_agreement: float = Field(0.95, gt=0, le=1, description="least share of validation predictions the ONNX model must share with the PyTorch QAT model")
    parity_examples: int = Field(256, ge=1, description="validation sentences used for the parity check")


class FrozenFakeQuantize(torch.nn.Module):
    """A trained fake-quantize with its scale and zero point fixed: exports as Q/DQ."""

    def __init__(self, fake_quantize):
        super().__init__()
        from torch.ao.quantization import FusedMovingAvgObsFakeQuantize

        source = fake_quantize.activation_post_process if isinstance(fake_quantize, FusedMovingAvgObsFakeQuantize) else fake_quantize
        self.quant_min, self.quant_max = int(source.quant_min), int(source.quant_max)
        self.per_channel, self.axis = bool(fake_quantize.is_per_channel), int(fake_quantize.ch_axis)
        self.enabled = bool(fake_quantize.fake_quant_enabled[0])
        scale = fake_quantize.scale.detach().clone().float()
        zero_point = fake_quantize.zero_point.detach().clone().to(torch.int32)
        if not self.per_channel:
            scale, zero_point = scale.reshape(()), zero_point.reshape(())
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)

    def forward(self, x):
        if not self.enabled:
            return x
        if self.per_channel:
            return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, self.quant_min, self.quant_max)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)


class RowQuantizedEmbedding(torch.nn.Module):
    """uint8 codes with a per-row scale and floating-point offset, dequantized after the lookup."""

    def __init__(self, embedding):
        super().__init__()
        fake_quantize = embedding.weight_fake_quant
        scale, offset = fake_quantize.scale.detach().float(), fake_quantize.zero_point.detach().float()
        rounded = fake_quantize(embedding.weight.detach())
        codes = torch.clamp(torch.round(rounded / scale[:, None] + offset[:, None]), 0, 255).to(torch.uint8)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)

    def forward(self, ids):
        return (self.codes[ids].float() - self.offset[ids].unsqueeze(-1)) * self.scale[ids].unsqueeze(-1)


def exportable(fake_quantized: torch.nn.Module) -> torch.nn.Module:
    """A copy of the QAT model whose quantization exports to ONNX, computing the same logits."""
    from torch.ao.nn.qat import Embedding as QATEmbedding
    from torch.ao.quantization import FakeQuantizeBase

    def replace(module: torch.nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, QATEmbedding):
                if bool(child.weight_fake_quant.fake_quant_enabled[0]):
                    setattr(module, name, RowQuantizedEmbedding(child))
                else:
                    plain = torch.nn.Embedding(child.num_embeddings, child.embedding_dim, child.padding_idx)
                    plain.weight = child.weight
                    setattr(module, name, plain)
            elif isinstance(child, FakeQuantizeBase):
                setattr(module, name, FrozenFakeQuantize(child))
            else:
                replace(child)

    model = copy.deepcopy(fake_quantized)
    replace(model)
    return model.eval()


def fold_weight_quantization(path_in: Path, path_out: Path) -> None:
    """QuantizeLinear(constant FP32 weight) -> an INT8 initializer: the file then holds INT8 weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path_in))
    initializers = {i.name: i for i in model.graph.initializer}
    producer = {output: node for node in model.graph.node for output in node.output}

    def constant(name: str) -> np.ndarray:
        # Zero points reach QuantizeLinear through Cast and Identity nodes of constants.
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producer[name]
        if node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        if node.op_type == "Identity":
            return constant(node.input[0])
        if node.op_type == "Cast":
            return constant(node.input[0]).astype(onnx.helper.tensor_dtype_to_np_dtype(node.attribute[0].i))
        raise ValueError(f"not a constant: {name} ({node.op_type})")

    kept = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers:
            kept.append(node)
            continue
        weight, scale, zero_point = (constant(name) for name in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * weight.ndim
            shape[axis] = -1
            scale, offset = scale.reshape(shape), zero_point.reshape(shape)
        else:
            offset = zero_point
        limits = np.iinfo(zero_point.dtype)
        codes = np.clip(np.rint(weight / scale) + offset.astype(np.int32), limits.min, limits.max).astype(zero_point.dtype)
        model.graph.initializer.append(numpy_helper.from_array(codes, node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {name for node in model.graph.node for name in node.input}
    live = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)
    onnx.checker.check_model(model)
    onnx.save(model, str(path_out))


def prepare_qat(model: torch.nn.Module) -> torch.nn.Module:
    """The model with INC's fake quantization inserted, ready to train."""
    from neural_compressor import QuantizationAwareTrainingConfig
    from neural_compressor.training import prepare_compression

    inc_log = logging.getLogger("neural_compressor")
    level = inc_log.level
    inc_log.setLevel(logging.WARNING)  # it logs every traced sub-module at INFO
    try:
        manager = prepare_compression(model, QuantizationAwareTrainingConfig())
        manager.callbacks.on_train_begin()
    finally:
        inc_log.setLevel(level)
    return manager.model._model


def build_qat(params: QATParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    from torch.ao.quantization import disable_observer

    tokens = open_tokens(inputs["tokens"])
    pad_id = tokens.spec.pad_id
    train_ids, train_labels = tokens.split("train")
    validation = tokens.split("validation")
    model = prepare_qat(load_trained(model_folder(inputs["student"])))
    # Fake-quantize observers keep state a safetensors snapshot does not restore into
    # a freshly prepared model; QAT runs are short, so they are not checkpointed.
    uncheckpointed = copy.copy(progress)
    uncheckpointed.checkpoints = None
    history = train(model, train_ids, classification_loss(train_labels), params, uncheckpointed, "qat_student", pad_id, validation)
    model.apply(disable_observer).eval()

    frozen = exportable(model)
    with tempfile.TemporaryDirectory(prefix="qat-") as scratch:
        raw = Path(scratch) / "qdq.onnx"
        export(frozen, raw, params.opset)
        fold_weight_quantization(raw, onnx_file(out))
    (out / "config.json").write_bytes((model_folder(inputs["student"]) / "config.json").read_bytes())

    sequences = validation[0][: params.parity_examples]
    reference = predict_logits(model, sequences, pad_id)
    session = onnx_session(onnx_file(out))
    onnx_out = np.zeros_like(reference)
    for batch in inference_batches([len(s) for s in sequences], 64):  # padded, as evaluate runs it
        onnx_out[batch] = onnx_logits(session, *(t.numpy() for t in pad(sequences, batch, pad_id)))
    agreement = float((onnx_out.argmax(1) == reference.argmax(1)).mean())
    if agreement < params.parity_agreement:
        raise RuntimeError(f"the QDQ ONNX model agrees with the PyTorch QAT model on {agreement:.1%} of validation "
                           f"sentences, below {params.parity_agreement:.0%}; not publishing it")
    int8_validation = accuracy(predictions(lambda ids, mask: onnx_logits(session, ids, mask), validation[0], pad_id),
                               validation[1])
    import onnx

    ops = [node.op_type for node in onnx.load(str(onnx_file(out))).graph.node]
    history.update({
        "parity_agreement": round(agreement, 5),
        "validation_accuracy_int8": round(int8_validation, 5),
        "quantize_linear_nodes": ops.count("QuantizeLinear"),
        "dequantize_linear_nodes": ops.count("DequantizeLinear"),
        "parity_max_abs_diff": round(float(np.abs(onnx_out - reference).max()), 6),
        "size_bytes": onnx_file(out).stat().st_size,
    })
    (out / "qat.json").write_text(json.dumps(history, indent=2))
    progress.info(f"qat_student: ONNX agrees with PyTorch QAT on {agreement:.1%}, INT8 validation accuracy "
                  f"{int8_validation:.4f}, {history['size_bytes'] / 1e6:.1f} MB")
    return history


STAGE = Stage(
    name="qat_student",
    writes=ONNX,
    params=QATParams,
    inputs=("tokens", "student"),
    build=build_qat,
    libraries=("torch", "transformers", "onnx", "onnxruntime", "neural_compressor"),
)
