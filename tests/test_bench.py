"""bench/compare.py on a smoke run's store: every variant measured, teacher variants built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from artifacts.store import ArtifactStore
from conftest import OFFLINE, REPO, store_copy


def run_compare(store, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/compare.py", "--store", str(store), "--quick", "--out", str(out)],
                          cwd=REPO, env={**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)


def test_compare_measures_every_variant_against_the_teacher(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    first = run_compare(store, tmp_path / "compare.json")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "building emotion/compare/teacher-onnx" in first.stdout and "building emotion/compare/teacher-int8" in first.stdout
    result = json.loads((tmp_path / "compare.json").read_text())
    models = result["models"]
    assert list(models) == ["teacher FP32 PyTorch", "teacher FP32 ONNX", "teacher INT8 (INC)", "student FP32 PyTorch",
                            "student FP32 ONNX", "student INT8 (INC)", "student INT8 (onnxruntime quantize_dynamic)"]
    base = models["teacher FP32 PyTorch"]
    assert base["speedup_p50"] == base["throughput_ratio"] == base["size_ratio"] == 1.0
    for name, row in models.items():
        assert 0 <= row["accuracy"] <= 1 and row["latency_p50_ms"] > 0 and row["throughput_batch32"] > 0
        assert row["speedup_p50"] == round(base["latency_p50_ms"] / row["latency_p50_ms"], 2)
    assert models["student INT8 (INC)"]["size_bytes"] < 0.6 * models["student FP32 ONNX"]["size_bytes"]
    # The INC student is the run's own model, read through its alias.
    assert result["artifacts"]["student_int8"] == cold[2].summary["stages"]["quantize"]["artifact"]
    table = (tmp_path / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in models) and "student QAT INT8 | not built" in table
    # A second comparison reuses the teacher's ONNX and INT8 models instead of rebuilding them.
    teacher_int8 = ArtifactStore(store).resolve_alias("emotion/compare/teacher-int8")
    second = run_compare(store, tmp_path / "again.json")
    assert second.returncode == 0 and "building" not in second.stdout, second.stdout[-2000:]
    assert json.loads((tmp_path / "again.json").read_text())["artifacts"]["teacher_int8"] == teacher_int8.digest
