"""Stage `export_onnx`: a model as an ONNX graph with dynamic batch and length.

The graph comes from tasks/onnx/graph.py. It is only published if ONNX Runtime
reproduces PyTorch's logits on real validation sentences (the model's own tokens),
batched with padding and one at a time.

With `fuse` (the default) the graph then goes through onnxruntime's transformer
optimizer, which replaces each layer's attention subgraph by one `Attention` kernel,
the embeddings by `EmbedLayerNormalization`, residual + LayerNorm by
`SkipLayerNormalization` and bias + GELU by `BiasGelu`: 44 nodes instead of 418 for
the 3-layer student, and 7-12% less batch-1 latency at tweet length (bench/fusion.py).
INC quantizes these fused kernels directly (QAttention, QEmbedLayerNormalization). The optimizer only recognises attention as the eager
implementation writes it, not transformers' default SDPA, so the model is exported
with eager attention (same weights, same logits). Its fused kernels assume
right-padded 0/1 masks, which is how every caller here pads; the parity check runs on
padded batches to hold it to that. The fusions are written for BERT (its embeddings
and attention); other architectures (MPNet, with relative position buckets and
padding-derived position ids) are exported as plain graphs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.data.batching import pad
from tasks.formats import ONNX, model_folder, onnx_file, open_tokens
from tasks.models.loading import load_trained
from tasks.onnx.graph import export
from tasks.onnx.session import onnx_logits, onnx_session


class ExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    opset: int = Field(17, ge=14, le=20, description="ONNX opset version")
    parity_tolerance: float = Field(1e-3, gt=0, description="largest allowed |logit difference| between PyTorch and ONNX Runtime")
    parity_examples: int = Field(64, ge=1, description="validation sentences used for the parity check")
    fuse: bool = Field(True, description="fuse attention, embeddings, LayerNorm and GELU into onnxruntime's transformer kernels")


def fuse_transformer_ops(path: Path, config) -> dict[str, int]:
    """Rewrite the graph at `path` in place with onnxruntime's BERT fusions; the fused op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1)
    optimized.save_model_to_file(str(path))
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


def parity_gap(model: torch.nn.Module, session, sequences: list[np.ndarray], pad_id: int) -> float:
    """Largest |logit difference| over one padded batch and each sentence alone."""
    batches = [list(range(len(sequences)))] + [[i] for i in range(min(8, len(sequences)))]
    gap = 0.0
    with torch.inference_mode():
        for batch in batches:
            ids, mask = pad(sequences, batch, pad_id)
            reference = model(input_ids=ids, attention_mask=mask).logits.numpy()
            gap = max(gap, float(np.abs(onnx_logits(session, ids.numpy(), mask.numpy()) - reference).max()))
    return gap


FUSABLE_ARCHITECTURES = ("bert",)


def build_onnx(params: ExportParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    model = load_trained(model_folder(inputs["model"]))
    fuse = params.fuse and model.config.model_type in FUSABLE_ARCHITECTURES
    if params.fuse and not fuse:
        progress.info(f"export_onnx: onnxruntime's transformer fusions cover {', '.join(FUSABLE_ARCHITECTURES)}, "
                      f"not {model.config.model_type}; exporting a plain graph")
    if fuse:
        model.set_attn_implementation("eager")
    path = onnx_file(out)
    export(model, path, params.opset)
    fused = fuse_transformer_ops(path, model.config) if fuse else {}
    if fuse and fused.get("Attention", 0) != model.config.num_hidden_layers:
        progress.info(f"export_onnx: onnxruntime fused attention in {fused.get('Attention', 0)} of "
                      f"{model.config.num_hidden_layers} layers; the rest stay plain subgraphs (correct, slower)")
    tokens = open_tokens(inputs["tokens"])
    sequences, _ = tokens.split("validation")
    gap = parity_gap(model, onnx_session(path), sequences[: params.parity_examples], tokens.spec.pad_id)
    if gap > params.parity_tolerance:
        raise RuntimeError(f"ONNX export differs from PyTorch by {gap:.2e} > {params.parity_tolerance:.0e}; not publishing it")
    (out / "config.json").write_bytes((model_folder(inputs["model"]) / "config.json").read_bytes())
    progress.info(f"export_onnx: parity gap {gap:.2e}, {path.stat().st_size / 1e6:.1f} MB"
                  + (f", fused {fused}" if fused else ""))
    return {"parity_max_abs_diff": gap, "size_bytes": path.stat().st_size, "fused_ops": fused, "fused": fuse}


STAGE = Stage(
    name="export_onnx",
    writes=ONNX,
    params=ExportParams,
    inputs=("model", "tokens"),
    build=build_onnx,
    libraries=("torch", "transformers", "onnx", "onnxruntime"),
)
