"""A local `evaluate` metric: accuracy, macro-F1, per-class F1 and confusion matrix.

Loaded by path (`evaluate.load(<this folder>)`), so it works offline, unlike
`evaluate.load("accuracy")`, which fetches its script from the Hub.
"""

import datasets
import evaluate
import numpy as np


class ClassificationReport(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy, macro-F1, per-class F1 and the confusion matrix of a single-label classifier.",
            citation="",
            inputs_description="predictions and references: integer class ids; num_labels: the number of classes.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        n = num_labels or int(max(predictions.max(), references.max()) + 1)
        confusion = np.zeros((n, n), dtype=np.int64)  # rows: true class, columns: predicted
        np.add.at(confusion, (references, predictions), 1)
        true_positive = np.diag(confusion).astype(float)
        predicted, actual = confusion.sum(0), confusion.sum(1)
        precision = np.divide(true_positive, predicted, out=np.zeros(n), where=predicted > 0)
        recall = np.divide(true_positive, actual, out=np.zeros(n), where=actual > 0)
        denominator = precision + recall
        f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n), where=denominator > 0)
        return {
            "accuracy": float(true_positive.sum() / max(1, len(references))),
            "macro_f1": float(f1.mean()),
            "per_class_f1": [float(v) for v in f1],
            "confusion_matrix": confusion.tolist(),
        }
