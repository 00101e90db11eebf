"""Stage `compare_data`: the new training data against the data the production model was trained on.

Runs when the workload has a production model (`<name>/production`) trained on other
data. Label-distribution shift (L-infinity), classes gained or lost, the training rows
falling, and the production INT8 model's agreement with the new labels: its accuracy on
a seeded sample of training rows it never saw (all sampled rows when fewer than a tenth
are new) against its accuracy on a sample of its own training rows. Shuffled labels or
labels that changed meaning show as a sharp fall; an INT8 model reads thousands of
rows in seconds. Findings not accepted (--data-allow) stop the run before training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from artifacts.stage import Progress, Stage
from tasks.data.checks import CheckParams, comparison_findings, split_statistics
from tasks.formats import DATA_COMPARISON, read_dataset
from tasks.measure.new_texts import predicted_labels


def _agreement(rows: pd.DataFrame, names: list[str], model: Path, tokens: Path, sample: int, seed: int) -> dict:
    """The production model's accuracy on (a seeded sample of) these rows' labels, by label name."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(rows), size=min(sample, len(rows)), replace=False) if len(rows) else np.array([], dtype=int)
    texts = rows["text"].iloc[picked].tolist()
    truth = [names[i] for i in rows["label"].iloc[picked]]
    said = predicted_labels(model, tokens, texts) if texts else []
    right = sum(a == b for a, b in zip(said, truth))
    return {"rows": len(texts), "accuracy": round(right / len(texts), 6) if texts else 0.0}


def build_comparison(params: CheckParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    new, new_names = read_dataset(inputs["dataset"])
    old, old_names = read_dataset(inputs["production_dataset"])
    train, old_train = new["train"], old["train"]
    stats = {
        "new": split_statistics(train["text"].tolist(), train["label"].to_numpy(), new_names, params.long_chars),
        "production": split_statistics(old_train["text"].tolist(), old_train["label"].to_numpy(), old_names, params.long_chars),
    }
    seen = set(old_train["text"])
    unseen = train[~train["text"].isin(seen)]
    judged = unseen if len(unseen) >= 0.1 * len(train) else train
    model, tokens = inputs["production_int8"], inputs["production_tokens"]
    agreement = {
        "new": {**_agreement(judged, new_names, model, tokens, params.agreement_rows, params.seed),
                "rows_new_to_the_model": len(unseen)},
        "own": _agreement(old_train, old_names, model, tokens, params.agreement_rows, params.seed),
    }
    agreement["drop"] = round(agreement["own"]["accuracy"] - agreement["new"]["accuracy"], 6)
    findings = comparison_findings(stats["new"], stats["production"], agreement, params)
    (out / "comparison.json").write_text(json.dumps({"statistics": stats, "agreement": agreement, "findings": findings}, indent=2))
    progress.info(f"compare_data: production model agrees with {agreement['new']['accuracy']:.1%} of new labels, "
                  f"{agreement['own']['accuracy']:.1%} of its own; {len(findings)} finding(s)")
    for f in findings:
        progress.info(f"compare_data: {f['anomaly']}{' (allowed)' if f['allowed'] else ''}: {f['message']}")
    return {"findings": [f["anomaly"] for f in findings], "agreement_drop": agreement["drop"]}


STAGE = Stage(
    name="compare_data",
    writes=DATA_COMPARISON,
    params=CheckParams,
    inputs=("dataset", "production_dataset", "production_tokens", "production_int8"),
    build=build_comparison,
    libraries=("pandas", "pyarrow", "onnxruntime", "transformers"),
)
