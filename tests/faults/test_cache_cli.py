"""`python -m artifacts`: list, verify, gc and explain on a real store."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts.store import ArtifactStore
from conftest import OFFLINE, REPO, run_cli, store_copy
from flows.pipeline import STEP_NAMES


def cache(store: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "artifacts", "--store", str(store), *args], cwd=REPO,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)


def test_list_shows_every_artifact_and_what_keeps_it(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    out = cache(store, "list")
    assert out.returncode == 0, out.stderr
    for stage in cold[2].summary["stages"].values():
        assert stage["artifact"][:12] in out.stdout
    report = cold[2].summary["report"]["artifact"]
    assert f"{report[:12]}  run-report report" in out.stdout and "alias emotion/report" in out.stdout
    assert "record " in out.stdout and "12 artifacts" in out.stdout  # ten steps, the run's report and its run record
    assert f"{cold[2].summary['run'][:12]}  run      run" in out.stdout


def test_verify_finds_a_flipped_byte_and_repair_removes_it(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    assert cache(store, "verify").returncode == 0
    digest = cold[2].summary["stages"]["distil_student"]["artifact"]
    weights = store / "objects" / digest / "model" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[100] ^= 0x10
    weights.write_bytes(bytes(raw))
    found = cache(store, "verify")
    assert found.returncode == 1 and f"BROKEN {digest[:12]}" in found.stdout and "checksum" in found.stdout
    assert cache(store, "verify", "--repair").returncode == 0
    assert not (store / "objects" / digest).exists()
    assert cache(store, "verify").returncode == 0


def test_gc_deletes_only_what_nothing_references(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    artifacts = ArtifactStore(store)
    with artifacts.new_artifact() as out:
        (out / "orphan.bin").write_bytes(b"left over by an abandoned experiment")
        orphan = artifacts.publish(out, "model", {"stage": "fine_tune_teacher", "upstream": {}})
    artifacts.note_key("d" * 64, orphan)  # a key note is no reference: it goes with its artifact
    (store / "staging" / "interrupted-run").mkdir(parents=True)
    finished_key = next((store / "records").iterdir()).name
    for key in (finished_key, "c" * 64):  # a finished stage's leftover, and a crashed run's
        (store / "checkpoints" / key).mkdir(parents=True)
        (store / "checkpoints" / key / "checkpoint.json").write_text("{}")
    dry = cache(store, "gc", "--min-age-minutes", "0")
    assert f"would delete {orphan.digest[:12]}" in dry.stdout and "staging/interrupted-run" in dry.stdout
    assert (store / "objects" / orphan.digest).exists()  # a dry run deletes nothing
    young = cache(store, "gc", "--delete")  # default: nothing under an hour old
    assert (store / "objects" / orphan.digest).exists(), young.stdout
    cache(store, "gc", "--delete", "--min-age-minutes", "0")
    assert not (store / "objects" / orphan.digest).exists()
    assert artifacts.made_under("d" * 64) is None
    kept_notes = artifacts.noted_keys()
    assert kept_notes and all(artifacts.verify(artifacts.made_under(key)).ok for key in kept_notes)
    assert not (store / "staging" / "interrupted-run").exists()
    assert not (store / "checkpoints" / finished_key).exists()
    assert (store / "checkpoints" / ("c" * 64)).exists()  # may still be resumed
    for stage in cold[2].summary["stages"].values():
        assert artifacts.verify(stage["artifact"]).ok


def test_explain_names_what_changed(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    same = cache(store, "explain", "--smoke", "--data", cold[1][2])
    assert same.returncode == 0, same.stderr
    assert all(": cached" in line for line in same.stdout.splitlines()), same.stdout
    # A cached step says what computed it, from its manifest: thread counts are not keyed.
    teacher = next(line for line in same.stdout.splitlines() if line.startswith("fine_tune_teacher:"))
    ran = ArtifactStore(str(store)).manifest(cold[2].summary["stages"]["fine_tune_teacher"]["artifact"])["runtime"]
    assert f"made on {ran['cpus']} CPU" in teacher and f", {ran['torch_threads']} torch thread" in teacher, teacher
    changed = cache(store, "explain", "--smoke", "--data", cold[1][2], "--set", "quantize.approach=static")
    lines = dict(line.split(": ", 1) for line in changed.stdout.splitlines())
    assert lines["quantize"].startswith("would run") and "parameter approach: dynamic -> static" in lines["quantize"]
    assert "upstream quantize reruns" in lines["evaluate"]
    assert all(lines[s].startswith("cached") for s in ("fetch_dataset", "tokenize_teacher", "tokenize_student", "fine_tune_teacher", "distil_student", "export_onnx"))
    record = next((store / "records").iterdir())
    json.loads(record.read_text())  # records are plain JSON



def test_explain_names_an_input_a_stage_gained_since_its_artifact(cold, monkeypatch):
    # Stores made before a stage was added upstream (the soft-label stage, for one)
    # hold artifacts whose manifests lack that input; explain says so instead of failing.
    from flows import explain

    def without_augmented(store, name):
        manifests = last_manifests(store, name)
        manifests["distil_student"] = {**manifests["distil_student"], "upstream": {
            k: v for k, v in manifests["distil_student"]["upstream"].items() if k != "soft_labels"}}
        return manifests

    last_manifests = explain.last_manifests
    monkeypatch.setattr(explain, "last_manifests", without_augmented)
    lines = dict(line.split(": ", 1) for line in explain.explain(ArtifactStore(str(cold[0])), "emotion", cold[1][2], True,
                                                                 {"student": {"seed": 7}}))
    assert lines["distil_student"] == ("would run: it now also reads 'soft_labels', which its artifact was made without; "
                                       "parameter seed: 42 -> 7")
    assert lines["export_onnx"].startswith("would run: upstream distil_student reruns")
    assert all(lines[s].startswith("cached") for s in ("fetch_dataset", "tokenize_teacher", "tokenize_student", "fine_tune_teacher", "augment_data",
                                                         "soft_labels"))


@pytest.mark.parametrize("forget", [("records",), ("records", "keys")], ids=["records", "records-and-key-notes"])
def test_artifacts_without_cache_records_are_reused_not_recomputed(cold, tmp_path, forget):
    """Artifacts made under the run's keys but with no Prefect record (a benchmark's plain
    run_stage calls, or a store whose records were lost) are cache hits, and get records:
    found by run_stage's key notes, or without them (older stores) by their manifests."""
    store = store_copy(cold, tmp_path)
    for folder in forget:
        shutil.rmtree(store / folder)
    explained = cache(store, "explain", *cold[1])
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    assert len(lines) == len(STEP_NAMES), explained.stdout
    assert all(": cached" in line and "made under this key without a cache record" in line for line in lines), explained.stdout
    run = run_cli([*cold[1], "--store", str(store)], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert set(run.states().values()) == {"cached"}, run.states()
    assert "fine_tune_teacher: no usable cache record; reusing model" in run.output
    assert ({step: s["artifact"] for step, s in run.summary["stages"].items()}
            == {step: s["artifact"] for step, s in cold[2].summary["stages"].items()})
    assert len(list((store / "records").iterdir())) == len(STEP_NAMES)  # Prefect recorded each reuse
    again = cache(store, "explain", *cold[1]).stdout
    assert all(": cached" in line and "without a cache record" not in line for line in again.splitlines()), again
