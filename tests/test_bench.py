"""The benchmarks on a smoke run's store: compare, fusion and ceiling measure the run its record
names, each model on its own tokens, and bench/pipeline.py's plain calls make the flow's artifacts."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from artifacts.store import ArtifactStore
from conftest import OFFLINE, REPO, store_copy


def bench_module(name: str):
    return importlib.import_module(f"bench.{name}")


def run_bench(name: str, store, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"bench/{name}.py", "--store", str(store), "--workload", "emotion-smoke", "--quick",
                           "--out", str(out)],
                          cwd=REPO, env={**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=600)


def test_compare_measures_every_variant_against_the_teacher(cold, tmp_path, capsys):
    store = store_copy(cold, tmp_path)
    summary = cold[2].summary
    first = run_bench("compare", store, tmp_path / "compare.json")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for built in ("teacher-onnx", "teacher-int8", "student-qat"):
        assert f"built emotion-smoke/compare/{built}" in first.stdout
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
    # The run's own models, read through its record: the smoke teacher and student read
    # different tokenizers, and each is measured on its own tokens.
    steps = summary["stages"]
    assert result["artifacts"]["student_int8"] == steps["quantize"]["artifact"]
    assert result["artifacts"]["teacher_tokens"] == steps["tokenize_teacher"]["artifact"]
    assert result["artifacts"]["student_tokens"] == steps["tokenize_student"]["artifact"]
    assert result["tokenizers"] == {"teacher": "tiny-mpnet", "student": "minilm"}
    # --quick keeps all of the smoke run's 150 test rows, so every figure is the evaluate stage's (tasks/measure/metrics.py).
    assert result["test_sentences"] == 150
    for name, model in (("teacher FP32 PyTorch", "teacher"), ("student FP32 PyTorch", "student"), ("student INT8 (INC)", "student_int8")):
        for metric in ("accuracy", "macro_f1", "per_class_f1"):
            assert models[name][metric] == summary["metrics"][model][metric], (name, metric)
    table = (tmp_path / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in models)
    assert result["machine"]["cores"] == os.cpu_count() and f"{os.cpu_count()} cores" in table.splitlines()[0]
    assert "teacher models on tiny-mpnet tokens" in table.splitlines()[0]
    # A second comparison finds the teacher's ONNX and INT8 models and the QAT student
    # by their cache keys instead of rebuilding them.
    compare = bench_module("compare")
    again = compare.lineage(ArtifactStore(store), "emotion-smoke", compare.qat.QATParams())
    assert "built " not in capsys.readouterr().out
    assert {name: ref.digest for name, ref in again.items()} == result["artifacts"]
    # --int8 names the run by its record (alias or digest) or by its INT8 student, and refuses anything else.
    for start in (result["artifacts"]["student_int8"], summary["run"], "emotion-smoke/latest"):
        found = compare.lineage(ArtifactStore(store), "emotion-smoke", compare.qat.QATParams(), start)
        assert {name: ref.digest for name, ref in found.items()} == result["artifacts"], start
    with pytest.raises(SystemExit, match="no alias 'emotion/nothing'"):
        compare.find_run(ArtifactStore(store), "emotion-smoke", "emotion/nothing")
    with pytest.raises(SystemExit, match="made by stage 'fine_tune_teacher', and no run record names it"):
        compare.find_run(ArtifactStore(store), "emotion-smoke", result["artifacts"]["teacher"])
    with pytest.raises(SystemExit, match="is a run of workload 'emotion-smoke', not 'sst2'"):
        compare.find_run(ArtifactStore(store), "sst2", summary["run"])
    with pytest.raises(SystemExit, match="no alias 'sst2/latest'"):
        compare.find_run(ArtifactStore(store), "sst2", None)
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
    out = run_bench("fusion", store, tmp_path / "fusion.json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "fusion.json").read_text())
    models = result["models"]
    # The smoke teacher is an MPNet, which onnxruntime's BERT fusions do not cover: its
    # plain graph only (a "fused" export would be the same graph), and a note says so.
    assert list(models) == ["teacher FP32 ONNX, plain", "teacher INT8 (INC), plain", "student FP32 ONNX, plain",
                            "student INT8 (INC), plain", "student FP32 ONNX, fused", "student INT8 (INC), fused"]
    assert result["notes"] == ["teacher: mpnet, which onnxruntime's transformer fusions do not cover: plain graph only"]
    for precision in ("FP32 ONNX", "INT8 (INC)"):
        plain, fused = models[f"student {precision}, plain"], models[f"student {precision}, fused"]
        assert fused["nodes"] < 0.5 * plain["nodes"]
        assert len(fused["latency_p50_rounds_ms"]) == 2 and fused["latency_p50_ms"] > 0
    # FP32 fusion changes no prediction: the fused kernels compute the same function
    assert models["student FP32 ONNX, plain"]["accuracy"] == models["student FP32 ONNX, fused"]["accuracy"]
    # Each model on its own tokens: the teacher's FP32 graph scores as the teacher did in evaluate.
    assert models["teacher FP32 ONNX, plain"]["accuracy"] == cold[2].summary["metrics"]["teacher"]["accuracy"]
    table = (tmp_path / "fusion.md").read_text()
    assert "| student INT8 (INC), fused |" in table and "Note: teacher: mpnet" in table


def test_ceiling_measures_every_teacher_their_ensemble_and_their_students(cold, tmp_path, emotion_dir):
    from artifacts.stage import Progress, run_stage
    from flows.presets import build_config, emotion
    from tasks.stages import fetch, teacher, tokenize
    from tasks.formats import model_folder, open_tokens
    from tasks.models.loading import load_trained
    from tasks.training.loop import predict_logits

    ceiling = bench_module("ceiling")
    store = ArtifactStore(store_copy(cold, tmp_path))
    quiet = Progress(lambda message: None, bar=False)
    steps = cold[2].summary["stages"]
    run_teacher, run_student = steps["fine_tune_teacher"]["artifact"], steps["distil_student"]["artifact"]
    student_tokens = ceiling.ref_of(store, steps["tokenize_student"]["artifact"])
    smoke = build_config(emotion(), str(emotion_dir), smoke=True)
    # A second teacher of the same dataset with another tokenizer than the run's teacher:
    # a tiny BERT on the student's tokens.
    second = run_stage(teacher.STAGE, smoke.teacher.model_copy(update={"model": "tiny", "seed": 7}),
                       {"tokens": student_tokens}, store, quiet)
    # A teacher of another dataset (other rows) is no candidate.
    other_data = run_stage(fetch.STAGE, smoke.data.model_copy(update={"max_eval_rows": 100}), {}, store, quiet)
    other_tokens = run_stage(tokenize.STAGE, smoke.student_tokens, {"dataset": other_data}, store, quiet)
    stranger = run_stage(teacher.STAGE, smoke.teacher.model_copy(update={"model": "tiny"}), {"tokens": other_tokens}, store, quiet)
    # A rerun under changed code that trained the same weights (only its log differs)
    # is the same model: one row, not two.
    rerun = tmp_path / "rerun"
    shutil.copytree(store.open(ceiling.ref_of(store, run_student)), rerun, ignore=shutil.ignore_patterns("manifest.json"))
    (rerun / "student.json").write_text(json.dumps({"rerun": True}))
    first_manifest = store.manifest(run_student)
    assert store.publish(rerun, "model", {k: v for k, v in first_manifest.items()
                                          if k not in ("kind", "digest", "files", "sizes", "published")}).digest != run_student

    result = ceiling.ceiling(store, "emotion-smoke", None, quick=False)
    assert result["dataset"] == steps["fetch_dataset"]["artifact"]
    assert result["teachers"] == [run_teacher, second.digest] and stranger.digest not in result["teachers"]
    assert result["students"] == [run_student] and result["taught_by"] == {run_student: run_teacher}
    assert result["tokens"][run_teacher] == steps["tokenize_teacher"]["artifact"] != result["tokens"][second.digest]
    names = list(result["models"])
    assert len(names) == 4 and names[2] == "ensemble of the 2 teachers (mean logits)"
    assert names[0].startswith(f"teacher {run_teacher[:8]} (model tiny-mpnet, learning_rate ")
    assert names[3].startswith(f"student of {run_teacher[:8]} {run_student[:8]} (init tiny")
    # The run's own evaluate stage measured the same teacher and student on the same test split.
    for name, model in ((names[0], "teacher"), (names[3], "student")):
        for metric in ("accuracy", "macro_f1"):
            assert result["models"][name]["test"][metric] == cold[2].summary["metrics"][model][metric]
    # The ensemble predicts the argmax of the two teachers' summed logits, each teacher
    # on its own tokens of the same test rows.
    summed, labels = 0, None
    for digest in result["teachers"]:
        tokens = open_tokens(store.open(ceiling.ref_of(store, result["tokens"][digest])))
        ids, their_labels = tokens.split("test")
        assert labels is None or np.array_equal(labels, their_labels)
        labels = their_labels
        summed = summed + predict_logits(load_trained(model_folder(store.open(ceiling.ref_of(store, digest)))), ids, tokens.spec.pad_id, 64)
    assert result["models"][names[2]]["test"]["accuracy"] == float((summed.argmax(1) == labels).mean())
    table = ceiling.markdown(result)
    assert table.count("\n| ") == 5 and "| ensemble of the 2 teachers (mean logits) |" in table
    # Rows of another dataset cannot be joined with the run's.
    with pytest.raises(SystemExit, match="test rows of the tokens of .* differ"):
        ceiling.aligned_split({"run": open_tokens(store.open(student_tokens)), "other": open_tokens(store.open(other_tokens))}, "test")


def test_plain_calls_make_the_flows_artifacts(cold, tmp_path, emotion_dir):
    """bench/pipeline.py's plain-call side runs the same steps and, training being deterministic, makes the same artifacts."""
    from flows.pipeline import resolve

    pipeline = bench_module("pipeline")
    config, _ = resolve("emotion", str(emotion_dir), True, None, None)
    _, made = pipeline.plain_run(config, str(tmp_path / "plain"))
    flow = {step: s["artifact"] for step, s in cold[2].summary["stages"].items()}
    assert list(made) == list(flow)
    assert {step: d for step, d in made.items() if step != "evaluate"} == {step: d for step, d in flow.items() if step != "evaluate"}


def test_precision_pair_trains_each_side_once_and_a_rerun_only_scores(tmp_path, emotion_dir, capsys):
    # The pair's sides are cached in the store: a rerun to redraw the table must not retrain
    # (it once did, which for MPNet in FP32 is 73 minutes).
    precision = bench_module("precision")
    store = str(tmp_path / "store")
    first = precision.accuracy_pair(str(emotion_dir), "tiny-mpnet", store, smoke=True)
    assert capsys.readouterr().out.count("  built ") == 4  # the data, its tokens, one teacher per precision
    again = precision.accuracy_pair(str(emotion_dir), "tiny-mpnet", store, smoke=True)
    assert "built " not in capsys.readouterr().out
    assert again == first
    artifacts = ArtifactStore(store)
    for side in ("fp32", "bf16"):
        assert artifacts.manifest(first["sides"][side]["artifact"])["params"]["precision"] == side
        assert 0 <= first["sides"][side]["test_accuracy"] <= 1
    assert first["sides"]["fp32"]["artifact"] != first["sides"]["bf16"]["artifact"]
    gap = 100 * (first["sides"]["bf16"]["test_accuracy"] - first["sides"]["fp32"]["test_accuracy"])
    assert first["bf16_minus_fp32_test_points"] == round(gap, 2)
