"""bench/compare.py on a smoke run's store: every variant measured, teacher variants built once."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from artifacts.store import ArtifactRef, ArtifactStore
from conftest import OFFLINE, REPO, store_copy


def run_compare(store, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/compare.py", "--store", str(store), "--quick", "--out", str(out)],
                          cwd=REPO, env={**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)


def test_compare_measures_every_variant_against_the_teacher(cold, tmp_path, capsys):
    store = store_copy(cold, tmp_path)
    first = run_compare(store, tmp_path / "compare.json")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for built in ("teacher-onnx", "teacher-int8", "student-qat"):
        assert f"building emotion/compare/{built}" in first.stdout
    result = json.loads((tmp_path / "compare.json").read_text())
    models = result["models"]
    assert list(models) == ["teacher FP32 PyTorch", "teacher FP32 ONNX", "teacher INT8 (INC)", "student FP32 PyTorch",
                            "student FP32 ONNX", "student INT8 (INC)", "student INT8 (onnxruntime quantize_dynamic)",
                            "student QAT INT8 (INC QAT, QDQ)"]
    base = models["teacher FP32 PyTorch"]
    assert base["speedup_p50"] == base["throughput_ratio"] == base["size_ratio"] == 1.0
    for name, row in models.items():
        assert 0 <= row["accuracy"] <= 1 and row["latency_p50_ms"] > 0 and row["throughput_batch32"] > 0
        assert row["speedup_p50"] == round(base["latency_p50_ms"] / row["latency_p50_ms"], 2)
        assert len(row["latency_p50_rounds_ms"]) == result["latency_rounds"] == 2  # timed in turns, --quick: 2 rounds
    for int8 in ("student INT8 (INC)", "student QAT INT8 (INC QAT, QDQ)"):
        assert models[int8]["size_bytes"] < 0.6 * models["student FP32 ONNX"]["size_bytes"]
    # The INC student is the run's own model, read through its alias.
    assert result["artifacts"]["student_int8"] == cold[2].summary["stages"]["quantize"]["artifact"]
    table = (tmp_path / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in models)
    assert result["machine"]["cores"] == os.cpu_count() and f"{os.cpu_count()} cores" in table.splitlines()[0]
    # A second comparison finds the teacher's ONNX and INT8 models and the QAT student
    # by their cache keys instead of rebuilding them.
    spec = importlib.util.spec_from_file_location("compare", REPO / "bench" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    again = compare.lineage(ArtifactStore(store), "emotion", compare.qat.QATParams())
    assert "building" not in capsys.readouterr().out
    assert {name: ref.digest for name, ref in again.items()} == result["artifacts"]
    # --int8 starts from a given INT8 student, by digest or alias, and refuses anything else.
    by_digest = compare.lineage(ArtifactStore(store), "emotion", compare.qat.QATParams(), result["artifacts"]["student_int8"])
    assert {name: ref.digest for name, ref in by_digest.items()} == result["artifacts"]
    with pytest.raises(SystemExit, match="neither an alias nor a full artifact digest"):
        compare.int8_student(ArtifactStore(store), "emotion", "emotion/nothing")
    with pytest.raises(SystemExit, match="made by stage 'fine_tune_teacher'"):
        compare.int8_student(ArtifactStore(store), "emotion", result["artifacts"]["teacher"])
    # The teacher is exported like the student's graph: a manifest from before `fuse`
    # existed (content addressing keeps the first one) describes a plain export.
    student_onnx = result["artifacts"]["student_onnx"]
    assert compare.export_params_of(ArtifactStore(store), student_onnx).fuse is True
    manifest_path = store / "objects" / student_onnx / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["params"]["fuse"]
    manifest_path.write_text(json.dumps(manifest))
    assert compare.export_params_of(ArtifactStore(store), student_onnx).fuse is False


def test_fusion_bench_measures_plain_and_fused_graphs_of_both_models(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    out = subprocess.run([sys.executable, "bench/fusion.py", "--store", str(store), "--quick", "--out", str(tmp_path / "fusion.json")],
                         cwd=REPO, env={**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    models = json.loads((tmp_path / "fusion.json").read_text())["models"]
    assert len(models) == 8
    for model in ("teacher", "student"):
        for precision in ("FP32 ONNX", "INT8 (INC)"):
            plain, fused = models[f"{model} {precision}, plain"], models[f"{model} {precision}, fused"]
            assert fused["nodes"] < 0.5 * plain["nodes"]
            assert len(fused["latency_p50_rounds_ms"]) == 2 and fused["latency_p50_ms"] > 0
        # FP32 fusion changes no prediction: the fused kernels compute the same function
        assert models[f"{model} FP32 ONNX, plain"]["accuracy"] == models[f"{model} FP32 ONNX, fused"]["accuracy"]
    assert "| student INT8 (INC), fused |" in (tmp_path / "fusion.md").read_text()


def test_ceiling_measures_every_teacher_their_ensemble_and_their_students(cold, tmp_path):
    from artifacts.stage import Progress, run_stage
    from flows.presets import build_config, emotion
    from tasks import teacher
    from tasks.evaluate import torch_predictor
    from tasks.timing import predictions
    from tasks.tokenize import read_tokens

    spec = importlib.util.spec_from_file_location("ceiling", REPO / "bench" / "ceiling.py")
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    store = ArtifactStore(store_copy(cold, tmp_path))
    stages = cold[2].summary["stages"]
    tokens = store.manifest(stages["quantize"]["artifact"])["upstream"]["tokens"]
    # A second teacher on the same tokens: another seed of the smoke run's teacher.
    smoke_teacher = build_config(emotion(), smoke=True).teacher.model_copy(update={"seed": 7})
    second = run_stage(teacher.STAGE, smoke_teacher, {"tokens": ArtifactRef(kind="dataset", digest=tokens)},
                       store, Progress(lambda message: None, bar=False))
    # A rerun under changed code that trained the same weights (only its log differs)
    # is the same model: one row, not two.
    student = stages["distil_student"]["artifact"]
    rerun = tmp_path / "rerun"
    shutil.copytree(store.open(ceiling.ref_of(store, student)), rerun, ignore=shutil.ignore_patterns("manifest.json"))
    (rerun / "student.json").write_text(json.dumps({"rerun": True}))
    first_manifest = store.manifest(student)
    assert store.publish(rerun, "model", {k: v for k, v in first_manifest.items()
                                          if k not in ("kind", "digest", "files", "sizes", "published")}).digest != student
    result = ceiling.ceiling(store, "emotion", None, quick=False)
    assert result["teachers"] == [stages["fine_tune_teacher"]["artifact"], second.digest]
    assert result["students"] == [stages["distil_student"]["artifact"]]
    names = list(result["models"])
    assert len(names) == 4 and names[2] == "ensemble of the 2 teachers (mean logits)"
    assert names[0].startswith(f"teacher {stages['fine_tune_teacher']['artifact'][:8]} (learning_rate ")
    assert names[3].startswith(f"student of {stages['fine_tune_teacher']['artifact'][:8]}")
    # The run's own evaluate stage measured the same teacher and student on the same test split.
    for name, model in ((names[0], "teacher"), (names[3], "student")):
        assert result["models"][name]["test"]["accuracy"] == round(cold[2].summary["metrics"][model]["accuracy"], 5)
    # The ensemble predicts the argmax of the two teachers' summed logits.
    first_predict, second_predict = (torch_predictor(store.open(ceiling.ref_of(store, d)))[0] for d in result["teachers"])
    ids, labels = read_tokens(store.open(ceiling.ref_of(store, tokens)), "test")
    summed = predictions(lambda i, m: first_predict(i, m) + second_predict(i, m), ids)
    assert result["models"][names[2]]["test"]["accuracy"] == round(float((summed == labels).mean()), 5)
    table = ceiling.markdown(result)
    assert table.count("\n| ") == 5 and "| ensemble of the 2 teachers (mean logits) |" in table
