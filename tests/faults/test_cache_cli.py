"""`python -m artifacts` (list, verify, gc) and `distillery explain` on a real store."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


from artifacts.checkpoints import Checkpoints
from artifacts.store import ArtifactStore
from conftest import OFFLINE, REPO, run_cli, store_copy
from flows.pipeline import STEP_NAMES


def cache(store: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "artifacts", "--store", str(store), *args], cwd=REPO,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)


def explain(store: Path, *args: str) -> subprocess.CompletedProcess:
    """`distillery explain` (the run's own flags), as a user runs it."""
    import os

    return subprocess.run([sys.executable, "-m", "flows.console", "explain", "--preset", "emotion", "--store", str(store), *args], cwd=REPO,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)


def test_list_shows_every_artifact_and_what_keeps_it(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    out = cache(store, "list")
    assert out.returncode == 0, out.stderr
    for stage in cold[2].summary["stages"].values():
        assert stage["artifact"][:12] in out.stdout
    report = cold[2].summary["report"]["artifact"]
    assert f"{report[:12]}  run-report report" in out.stdout and "alias emotion-smoke/report" in out.stdout
    assert "key " in out.stdout and "13 artifacts" in out.stdout  # eleven steps, the run's report and its run record
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
    with artifacts.new_artifact() as out:
        (out / "gone.bin").write_bytes(b"removed by verify --repair, say")
        gone = artifacts.publish(out, "model", {"stage": "fine_tune_teacher", "upstream": {}})
    artifacts.note_key("d" * 64, gone)  # a note of an artifact no longer there goes too
    artifacts.remove(gone.digest)
    (store / "staging" / "interrupted-run").mkdir(parents=True)
    finished_key = next((store / "keys").iterdir()).name.removesuffix(".json")
    for key in (finished_key, "c" * 64):  # a finished stage's leftover, and a crashed run's
        Checkpoints(artifacts, key).save(7, lambda folder: (folder / "state.bin").write_bytes(b"weights"))
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
    # Eight days later (as its checkpoint.json says: S3 keeps no file times), abandoned: collected.
    [meta] = (store / "checkpoints" / ("c" * 64)).glob("*/checkpoint.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "saved_at": time.time() - 8 * 86400}))
    cache(store, "gc", "--delete", "--min-age-minutes", "0")
    assert not (store / "checkpoints" / ("c" * 64)).exists()
    for stage in cold[2].summary["stages"].values():
        assert artifacts.verify(stage["artifact"]).ok


def test_explain_names_what_changed(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    same = explain(store, "--smoke", "--data", cold[1][2])
    assert same.returncode == 0, same.stderr
    assert all(": cached" in line for line in same.stdout.splitlines()), same.stdout
    # A cached step says what computed it, from its manifest: thread counts are not keyed.
    teacher = next(line for line in same.stdout.splitlines() if line.startswith("fine_tune_teacher:"))
    ran = ArtifactStore(str(store)).manifest(cold[2].summary["stages"]["fine_tune_teacher"]["artifact"])["runtime"]
    assert f"made on {ran['cpus']} CPU" in teacher and f", {ran['torch_threads']} torch thread" in teacher, teacher
    changed = explain(store, "--smoke", "--data", cold[1][2], "--quantize-approach", "static")
    lines = dict(line.split(": ", 1) for line in changed.stdout.splitlines())
    assert lines["quantize"].startswith("would run") and "parameter approach: dynamic -> static" in lines["quantize"]
    assert "upstream quantize reruns" in lines["evaluate"]
    assert all(lines[s].startswith("cached") for s in ("fetch_dataset", "tokenize_teacher", "tokenize_student", "fine_tune_teacher", "distil_student", "export_onnx"))
    note = next((store / "keys").iterdir())
    assert set(json.loads(note.read_text())) == {"kind", "digest"}  # the index is plain JSON refs



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


def artifacts_of(store: Path) -> ArtifactStore:
    return ArtifactStore(store)


def noted(artifacts: ArtifactStore, digest: str) -> bool:
    """Whether the key an artifact was made under is noted, naming it."""
    ref = artifacts.made_under(artifacts.manifest(digest)["key"])
    return ref is not None and ref.digest == digest


def test_a_store_without_key_notes_is_found_by_manifest_and_migrated(cold, tmp_path):
    """Artifacts made before key notes (or whose notes were lost) are cache hits on a local
    store, found by their manifests; the next run notes their keys."""
    store = store_copy(cold, tmp_path)
    shutil.rmtree(store / "keys")
    explained = explain(store, *cold[1])
    assert explained.returncode == 0, explained.stderr
    lines = explained.stdout.splitlines()
    assert len(lines) == len(STEP_NAMES) - 2, explained.stdout  # no compare_data, no judge: the run is production
    assert all(": cached" in line and "found by its manifest" in line for line in lines), explained.stdout
    run = run_cli([*cold[1], "--store", str(store)], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert set(run.states().values()) == {"cached"}, run.states()
    assert "fine_tune_teacher: reusing model" in run.output and "found by its manifest and noted" in run.output
    assert ({step: s["artifact"] for step, s in run.summary["stages"].items()}
            == {step: s["artifact"] for step, s in cold[2].summary["stages"].items()})
    assert all(noted(artifacts_of(store), s["artifact"]) for s in run.summary["stages"].values())  # noted on the way
    again = explain(store, *cold[1]).stdout
    assert all(": cached" in line and "found by" not in line for line in again.splitlines()), again


def test_a_store_of_old_prefect_records_keeps_working(cold, tmp_path):
    """Stores written before the one cache hold Prefect's records: followed as plain JSON, then noted."""
    from conftest import old_prefect_record

    from artifacts.store import ArtifactRef

    store = store_copy(cold, tmp_path)
    artifacts = ArtifactStore(store)
    (store / "records").mkdir()
    for key in artifacts.noted_keys():
        (store / "records" / key).write_text(old_prefect_record(artifacts.made_under(key)))
    shutil.rmtree(store / "keys")
    explained = explain(store, *cold[1]).stdout
    assert all(": cached" in line and "found by an old Prefect cache record" in line for line in explained.splitlines()), explained
    run = run_cli([*cold[1], "--store", str(store)], tmp_path)
    assert run.code == 0 and set(run.states().values()) == {"cached"}, run.output[-3000:]
    assert all(noted(artifacts, s["artifact"]) for s in run.summary["stages"].values())
    assert isinstance(artifacts.made_under(artifacts.noted_keys()[0]), ArtifactRef)


def test_explain_names_code_library_input_and_upstream_changes(cold):
    """Each kind of reason `explain` gives, from a manifest that differs from today's inputs in that one way."""
    from artifacts.runs import latest_run
    from flows.explain import WouldRun, _reasons
    from tasks.stages import fetch, teacher

    store = ArtifactStore(cold[0])
    record = latest_run(store, "emotion-smoke")
    made = store.manifest(record.role("teacher"))
    params = teacher.TeacherParams.model_validate(made["params"])
    inputs = {"tokens": record.role("teacher_tokens")}
    assert _reasons(store, teacher.STAGE, params, inputs, made) == []  # as it was made: nothing to say
    module = "tasks.training.loop"
    old = {**made, "code": {**made["code"], module: "0" * 64}, "versions": {**made["versions"], "torch": "1.0.0"},
           "upstream": {"tokens": "f" * 64}}
    reasons = _reasons(store, teacher.STAGE, params, inputs, old)
    assert f"code of {module} changed" in reasons
    assert f"library torch: 1.0.0 -> {made['versions']['torch']}" in reasons
    assert f"upstream tokens: artifact {'f' * 12} -> {inputs['tokens'].digest[:12]}" in reasons
    assert _reasons(store, teacher.STAGE, params, {"tokens": WouldRun("tokenize")}, made) == ["upstream tokenize reruns"]
    # A source file's content is an extra input of fetch_dataset: its change is named.
    fetched = store.manifest(record.role("dataset"))
    assert fetched["extra"], "fetch_dataset keys its source files' content"
    name = next(iter(fetched["extra"]))
    changed = {**fetched, "extra": {**fetched["extra"], name: "an older file"}}
    fetch_params = fetch.STAGE.params.model_validate(fetched["params"])
    assert any(r.startswith(f"input {name}: an older file -> ") for r in _reasons(store, fetch.STAGE, fetch_params, {}, changed))
