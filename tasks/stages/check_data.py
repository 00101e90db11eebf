"""Stage `check_data`: statistics of every split of the fetched data, and what is wrong with them.

Runs right after `fetch_dataset` and before anything trains: rows, label distribution,
text-length quantiles, duplicates, blank and over-long texts, and validation or test rows
whose text is also in train (tasks/data/checks.py). Findings the configuration does not
accept (--data-allow) stop the run before tokenizing (flows/pipeline.py). Cached by the
dataset's content, so an unchanged data set is checked once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from artifacts.stage import Progress, Stage
from tasks.data.checks import CheckParams, intrinsic_findings, split_statistics
from tasks.formats import DATA_CHECKS, SPLITS, read_dataset


def build_checks(params: CheckParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    splits, names = read_dataset(inputs["dataset"])
    train_texts = set(splits["train"]["text"])
    statistics = {
        split: split_statistics(splits[split]["text"].tolist(), splits[split]["label"].to_numpy(), names,
                                params.long_chars, None if split == "train" else train_texts)
        for split in SPLITS
    }
    findings = intrinsic_findings(statistics, params)
    (out / "checks.json").write_text(json.dumps({"statistics": statistics, "findings": findings}, indent=2))
    for f in findings:
        progress.info(f"check_data: {f['anomaly']}{' (allowed)' if f['allowed'] else ''}: {f['message']}")
    progress.info(f"check_data: {len(findings)} finding(s) in " + ", ".join(f"{s} {statistics[s]['rows']} rows" for s in SPLITS))
    return {"findings": [f["anomaly"] for f in findings]}


STAGE = Stage(
    name="check_data",
    writes=DATA_CHECKS,
    params=CheckParams,
    inputs=("dataset",),
    build=build_checks,
    libraries=("pandas", "pyarrow"),
)
