"""What new data looks like, and what is wrong with it, before anything trains on it.

Statistics of a split (rows, label distribution, text lengths, duplicates, empty and
over-long texts, rows shared with train) and the anomalies read from them, on their
own (`intrinsic_findings`) or against the data the production model was trained on
(`comparison_findings`, as TFX's ExampleValidator compares a span with the previous
one). A finding names its anomaly (one of ANOMALIES), says what was seen and the limit,
and whether the configuration accepts it on purpose (`CheckParams.allow`, flag
--data-allow). The flow stops a run on any finding that is not allowed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

# anomaly -> what it means. Names are what --data-allow takes.
ANOMALIES = {
    "empty_class": "a label of the data set has no training row",
    "overlap": "validation or test rows whose text is also in train (they would flatter every figure)",
    "duplicates": "the same text many times within the training split",
    "empty_texts": "blank texts",
    "classes_lost": "a class the production model was trained on is gone",
    "classes_gained": "a class the production model was never trained on",
    "label_shift": "the training label distribution moved (L-infinity distance, as TFX)",
    "rows_fell": "the training split shrank against the production model's",
    "labels_disagree": "the production model agrees much less with the new labels than with its own (labels shuffled or changed meaning)",
}


class CheckParams(BaseModel):
    """Limits of the data checks (stages check_data and compare_data)."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(default_factory=list, description=f"anomalies to accept on purpose, comma-separated: {', '.join(ANOMALIES)}")
    max_overlap: float = Field(0.02, ge=0, le=1, description="largest share of validation or test rows whose text is also in train")
    max_duplicates: float = Field(0.10, ge=0, le=1, description="largest share of training rows repeating an earlier row's text")
    max_empty: float = Field(0.0, ge=0, le=1, description="largest share of blank texts in a split")
    long_chars: int = Field(2000, ge=1, description="texts longer than this many characters are counted as over-long (a statistic)")
    max_label_shift: float = Field(0.10, ge=0, le=1, description="largest L-infinity distance between the training label shares and the production data's")
    max_row_drop: float = Field(0.25, ge=0, le=1, description="largest fall in training rows against the production data, as a share")
    max_agreement_drop: float = Field(0.15, ge=0, le=1, description="largest fall in the production model's accuracy on the new training labels against its accuracy on its own")
    agreement_rows: int = Field(2000, ge=10, description="training rows (a seeded sample) the production model classifies for the agreement check")
    seed: int = Field(0, description="seed of the agreement sample")

    @field_validator("allow")
    @classmethod
    def _known(cls, allow: list[str]) -> list[str]:
        unknown = [name for name in allow if name not in ANOMALIES]
        if unknown:
            raise ValueError(f"unknown anomaly {', '.join(map(repr, unknown))}: allow any of {', '.join(ANOMALIES)}")
        return sorted(set(allow))


def finding(anomaly: str, message: str, params: CheckParams) -> dict:
    return {"anomaly": anomaly, "message": message, "allowed": anomaly in params.allow}


def label_shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {name: (n / total if total else 0.0) for name, n in counts.items()}


def split_statistics(texts: Sequence[str], labels: np.ndarray, names: Sequence[str], long_chars: int,
                     train_texts: set[str] | None = None) -> dict:
    """Rows, label counts and shares, length quantiles, duplicates, blank and over-long texts; rows also in train."""
    lengths = np.array([len(t) for t in texts]) if len(texts) else np.zeros(1)
    counts = {name: int(n) for name, n in zip(names, np.bincount(labels, minlength=len(names)))}
    stats = {
        "rows": len(texts),
        "label_counts": counts,
        "label_shares": {k: round(v, 6) for k, v in label_shares(counts).items()},
        "chars": {q: int(np.percentile(lengths, p)) for q, p in (("p5", 5), ("p50", 50), ("p95", 95), ("max", 100))},
        "duplicates": len(texts) - len(set(texts)),
        "empty": sum(1 for t in texts if not t.strip()),
        "over_long": int((lengths > long_chars).sum()) if len(texts) else 0,
    }
    if train_texts is not None:
        stats["in_train"] = sum(1 for t in texts if t in train_texts)
    return stats


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def intrinsic_findings(stats: dict[str, dict], params: CheckParams) -> list[dict]:
    """Anomalies of one data set on its own, from `split_statistics` of each split."""
    found = []
    empty = [name for name, n in stats["train"]["label_counts"].items() if n == 0]
    if empty:
        found.append(finding("empty_class", f"train has no row of class {', '.join(map(repr, empty))}", params))
    for split, s in stats.items():
        if "in_train" in s and _share(s["in_train"], s["rows"]) > params.max_overlap:
            found.append(finding("overlap", f"{s['in_train']} of {s['rows']} {split} rows "
                                 f"({_share(s['in_train'], s['rows']):.1%}) have a text that is also in train "
                                 f"(limit {params.max_overlap:.1%})", params))
        if _share(s["empty"], s["rows"]) > params.max_empty:
            found.append(finding("empty_texts", f"{s['empty']} of {s['rows']} {split} rows are blank "
                                 f"(limit {params.max_empty:.1%})", params))
    train = stats["train"]
    if _share(train["duplicates"], train["rows"]) > params.max_duplicates:
        found.append(finding("duplicates", f"{train['duplicates']} of {train['rows']} train rows "
                             f"({_share(train['duplicates'], train['rows']):.1%}) repeat an earlier row's text "
                             f"(limit {params.max_duplicates:.1%})", params))
    return found


def label_shift(new: dict[str, float], old: dict[str, float]) -> tuple[float, str]:
    """L-infinity distance between two label-share maps (a missing class has share 0), and the class where it is."""
    classes = sorted(set(new) | set(old))
    gaps = {name: abs(new.get(name, 0.0) - old.get(name, 0.0)) for name in classes}
    worst = max(gaps, key=gaps.get)
    return gaps[worst], worst


def comparison_findings(new: dict, old: dict, agreement: dict | None, params: CheckParams) -> list[dict]:
    """Anomalies of new training data against the production model's (`split_statistics` of each train split)."""
    found = []
    new_classes = {name for name, n in new["label_counts"].items() if n > 0}
    old_classes = {name for name, n in old["label_counts"].items() if n > 0}
    if old_classes - new_classes:
        found.append(finding("classes_lost", f"class {', '.join(map(repr, sorted(old_classes - new_classes)))} of the "
                             f"production data has no training row now", params))
    if new_classes - old_classes:
        found.append(finding("classes_gained", f"class {', '.join(map(repr, sorted(new_classes - old_classes)))} is new: "
                             f"the production model never saw it", params))
    distance, where = label_shift(new["label_shares"], old["label_shares"])
    if distance > params.max_label_shift:
        found.append(finding("label_shift", f"the share of class {where!r} moved from {old['label_shares'].get(where, 0):.1%} "
                             f"to {new['label_shares'].get(where, 0):.1%} (L-infinity {distance:.3f}, limit "
                             f"{params.max_label_shift:g})", params))
    if new["rows"] < (1 - params.max_row_drop) * old["rows"]:
        found.append(finding("rows_fell", f"train has {new['rows']} rows against the production data's {old['rows']} "
                             f"({1 - _share(new['rows'], old['rows']):.0%} fewer; limit {params.max_row_drop:.0%})", params))
    if agreement is not None and agreement["drop"] > params.max_agreement_drop:
        found.append(finding("labels_disagree", f"the production model agrees with {agreement['new']['accuracy']:.1%} of "
                             f"{agreement['new']['rows']} new training labels against {agreement['own']['accuracy']:.1%} of its "
                             f"own ({agreement['drop']:.1%} lower; limit {params.max_agreement_drop:.0%})", params))
    return found


def blocking(findings: Sequence[dict]) -> list[dict]:
    return [f for f in findings if not f["allowed"]]
