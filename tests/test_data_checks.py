"""Data checks (tasks/data/checks.py, stage check_data): the statistics of a split, and each anomaly,
found and accepted on purpose."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import EMOTION_LABELS, write_emotion_slice
from artifacts.stage import run_stage
from artifacts.store import ArtifactStore
from tasks.data.checks import ANOMALIES, CheckParams, blocking, comparison_findings, intrinsic_findings, split_statistics
from tasks.data.sources import DataParams
from tasks.stages import check_data, fetch

NAMES = ["neg", "pos"]


def stats_of(splits: dict[str, tuple[list[str], list[int]]], long_chars: int = 2000) -> dict:
    train = set(splits["train"][0])
    return {name: split_statistics(texts, np.array(labels), NAMES, long_chars, None if name == "train" else train)
            for name, (texts, labels) in splits.items()}


def clean() -> dict:
    train = [f"train text {i}" for i in range(100)]
    return {"train": (train, [i % 2 for i in range(100)]),
            "validation": ([f"val text {i}" for i in range(20)], [i % 2 for i in range(20)]),
            "test": ([f"test text {i}" for i in range(20)], [i % 2 for i in range(20)])}


def anomalies(found: list[dict]) -> list[str]:
    return [f["anomaly"] for f in found]


def test_statistics_of_a_split():
    s = split_statistics(["a", "bb", "bb", " ", "x" * 50], np.array([0, 1, 1, 0, 1]), NAMES, long_chars=10, train_texts={"a", "zz"})
    assert s["rows"] == 5 and s["label_counts"] == {"neg": 2, "pos": 3} and s["label_shares"] == {"neg": 0.4, "pos": 0.6}
    assert (s["duplicates"], s["empty"], s["over_long"], s["in_train"]) == (1, 1, 1, 1)
    assert s["chars"]["max"] == 50 and s["chars"]["p50"] == 2


def test_clean_data_has_no_finding():
    assert intrinsic_findings(stats_of(clean()), CheckParams()) == []


def test_each_intrinsic_anomaly_is_found_and_can_be_allowed():
    data = clean()
    leak = {**data, "test": (data["train"][0][:20], data["train"][1][:20])}  # test rows copied from train
    one_class = {**data, "train": (data["train"][0], [0] * 100)}
    repeated = {**data, "train": (["same"] * 50 + data["train"][0][:50], data["train"][1])}
    blank = {**data, "validation": ([""] + data["validation"][0][1:], data["validation"][1])}
    for splits, expected in [(leak, "overlap"), (one_class, "empty_class"), (repeated, "duplicates"), (blank, "empty_texts")]:
        found = intrinsic_findings(stats_of(splits), CheckParams())
        assert anomalies(found) == [expected], (expected, found)
        assert blocking(found) == found and found[0]["allowed"] is False
        allowed = intrinsic_findings(stats_of(splits), CheckParams(allow=[expected]))
        assert allowed[0]["allowed"] and blocking(allowed) == []
    assert "20 of 20 test rows (100.0%)" in intrinsic_findings(stats_of(leak), CheckParams())[0]["message"]


def test_each_comparison_anomaly_against_the_production_data():
    old = split_statistics([f"t{i}" for i in range(100)], np.array([i % 2 for i in range(100)]), NAMES, 2000)
    same = dict(old)
    agreeing = {"new": {"accuracy": 0.90, "rows": 100}, "own": {"accuracy": 0.95, "rows": 100}, "drop": 0.05}
    assert comparison_findings(same, old, agreeing, CheckParams()) == []
    half = split_statistics([f"t{i}" for i in range(50)], np.array([i % 2 for i in range(50)]), NAMES, 2000)
    assert anomalies(comparison_findings(half, old, None, CheckParams())) == ["rows_fell"]
    skewed = split_statistics([f"t{i}" for i in range(100)], np.array([int(i % 10 == 0) for i in range(100)]), NAMES, 2000)
    found = comparison_findings(skewed, old, None, CheckParams())
    assert anomalies(found) == ["label_shift"] and "L-infinity 0.400" in found[0]["message"]
    lost = split_statistics([f"t{i}" for i in range(100)], np.zeros(100, dtype=int), NAMES, 2000)
    assert anomalies(comparison_findings(lost, old, None, CheckParams())) == ["classes_lost", "label_shift"]
    gained = split_statistics([f"t{i}" for i in range(100)], np.array([i % 3 for i in range(100)]), NAMES + ["mixed"], 2000)
    assert "classes_gained" in anomalies(comparison_findings(gained, old, None, CheckParams()))
    shuffled = {"new": {"accuracy": 0.45, "rows": 100}, "own": {"accuracy": 0.95, "rows": 100}, "drop": 0.50}
    found = comparison_findings(same, old, shuffled, CheckParams())
    assert anomalies(found) == ["labels_disagree"] and "45.0% of 100 new training labels against 95.0%" in found[0]["message"]


def test_unknown_anomaly_names_and_limits_outside_zero_to_one_are_refused():
    with pytest.raises(ValueError, match="unknown anomaly 'typo'"):
        CheckParams(allow=["overlap", "typo"])
    with pytest.raises(ValueError, match="max_overlap"):
        CheckParams(max_overlap=1.5)
    assert set(CheckParams(allow=list(ANOMALIES)).allow) == set(ANOMALIES)


def test_the_stage_checks_real_emotion_rows(tmp_path, emotion_dir):
    folder = write_emotion_slice(emotion_dir, tmp_path / "data", {"train": 400, "val": 60, "test": 60})
    store = ArtifactStore(tmp_path / "store")
    dataset = run_stage(fetch.STAGE, DataParams(source=str(folder), label_names=EMOTION_LABELS), {}, store)
    ref = run_stage(check_data.STAGE, CheckParams(), {"dataset": dataset}, store)
    report = json.loads((store.open(ref) / "checks.json").read_text())
    assert {s: report["statistics"][s]["rows"] for s in ("train", "validation", "test")} == {"train": 400, "validation": 60, "test": 60}
    assert sum(report["statistics"]["train"]["label_counts"].values()) == 400
    assert report["statistics"]["test"]["in_train"] == 0 and report["findings"] == []
