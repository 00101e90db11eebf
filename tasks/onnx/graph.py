"""PyTorch classifier -> ONNX graph with dynamic batch and length (export_onnx and qat_student).

Uses the TorchScript-based exporter (`dynamo=False`): it is fast, and its graphs
quantize directly, where the dynamo exporter's need their shape annotations cleared
first.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

INPUT_NAMES = ("input_ids", "attention_mask")


def export(model: torch.nn.Module, path: Path, opset: int) -> None:
    # Example ids of 5 (a real token in every vocabulary here), not the pad id: MPNet
    # derives position ids from which ids are padding, and the trace must see real tokens.
    example = (torch.full((2, 8), 5, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation noise
        torch.onnx.export(
            model, example, str(path), dynamo=False, opset_version=opset,
            input_names=list(INPUT_NAMES), output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
        )
