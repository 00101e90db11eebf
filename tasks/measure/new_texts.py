"""What an INT8 model in the store says of new texts: the production model judging new data.

The texts are encoded as the model's tokens artifact encoded its training data, and
scored as every accuracy in the project is (tasks/measure/metrics.py `predictions`).
Its own module, so the stages that score pre-tokenized splits (evaluate) do not take
the encoder into their code fingerprint.
"""

from __future__ import annotations

from pathlib import Path

from tasks.data.encoding import encoder_of
from tasks.formats import open_tokens
from tasks.measure.metrics import predictions
from tasks.measure.predictors import onnx_predictor


def predicted_labels(onnx_artifact: Path, tokens_artifact: Path, texts: list[str], threads: int | None = None) -> list[str]:
    """The label name the model gives each text."""
    tokens = open_tokens(tokens_artifact)
    predict, _ = onnx_predictor(onnx_artifact, threads)
    predicted = predictions(predict, encoder_of(tokens).encode(texts), tokens.spec.pad_id)
    return [tokens.labels[i] for i in predicted]
