"""The emotion flow end to end, as users run it: `python flows/emotion.py --smoke ...`.

Each run is a real process with its own temporary Prefect server; they share only
the artifact store, as separate runs on one machine do.
"""

import shutil
import subprocess
import sys

import pytest


from artifacts.runs import latest_run
from artifacts.stage import run_stage
from artifacts.store import ArtifactStore
from conftest import REPO, copy_project, run_cli, store_copy
from flows.pipeline import STEP_NAMES
from tasks.stages import augment, soft_labels

# A new INT8 model after the cold run (which is production) is judged against it.
TEACHER_AND_DOWN = {"fine_tune_teacher", "soft_labels", "distil_student", "export_onnx", "quantize", "evaluate", "judge"}
STUDENT_AND_DOWN = {"distil_student", "export_onnx", "quantize", "evaluate", "judge"}
FIRST_RUN_STEPS = [s for s in STEP_NAMES if s not in ("compare_data", "judge")]  # no production run to compare with


def test_cold_run_computes_every_stage_and_reports(cold):
    store, _, run = cold
    assert list(run.summary["stages"]) == FIRST_RUN_STEPS
    assert run.computed() == set(FIRST_RUN_STEPS)
    for stage in run.summary["stages"].values():
        assert ArtifactStore(store).verify(stage["artifact"]).ok and stage["seconds"] > 0
    for model in ("teacher", "student", "student_int8"):
        m = run.summary["metrics"][model]
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1 and m["latency_p50_ms"] > 0
    assert "student_int8" in run.output and "fine_tune_teacher" in run.output  # the printed table
    # The run record names every role; emotion-smoke/latest points at it (a smoke run goes by <name>-smoke).
    artifacts = ArtifactStore(store)
    assert artifacts.resolve_alias("emotion-smoke/latest").digest == run.summary["run"]
    record = latest_run(artifacts, "emotion-smoke")
    steps = {name: s["artifact"] for name, s in run.summary["stages"].items()}
    assert record.steps == steps
    assert {role: ref.digest for role, ref in record.roles.items()} == {
        "dataset": steps["fetch_dataset"], "data_checks": steps["check_data"], "teacher_tokens": steps["tokenize_teacher"], "student_tokens": steps["tokenize_student"],
        "teacher": steps["fine_tune_teacher"], "augmented": steps["augment_data"], "soft_labels": steps["soft_labels"],
        "student": steps["distil_student"], "student_onnx": steps["export_onnx"], "student_int8": steps["quantize"],
        "evaluation": steps["evaluate"], "report": run.summary["report"]["artifact"]}
    # A tiny MPNet teacher on its own tokens, a tiny BERT student on MiniLM's.
    assert artifacts.manifest(steps["tokenize_teacher"])["params"]["tokenizer"] == "tiny-mpnet"
    assert artifacts.manifest(steps["tokenize_student"])["params"]["tokenizer"] == "minilm"


def test_identical_rerun_is_entirely_cached(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    run = run_cli([*cold[1], "--store", str(store)], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert set(run.states().values()) == {"cached"}
    assert {k: v["artifact"] for k, v in run.summary["stages"].items()} == {k: v["artifact"] for k, v in cold[2].summary["stages"].items()}


def test_quantization_change_recomputes_only_quantize_evaluate_and_the_judge(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    run = run_cli([*cold[1], "--store", str(store), "--quantize-approach", "static", "--quantize-quant-format", "QDQ"], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert run.computed() == {"quantize", "evaluate", "judge"}
    # The laptop's temporary server (flows/laptop_server.py) served the run and outlived
    # Prefect's log flush: stopped before it, the log workers retry for a minute.
    assert "Temporary Prefect server on http://127.0.0.1:" in run.output
    assert "Error logging to API" not in run.output and "All connection attempts failed" not in run.output
    assert "View at" not in run.output  # no UI on a temporary server: no dead link


def test_student_only_change_reuses_the_teachers_soft_labels(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    run = run_cli([*cold[1], "--store", str(store), "--student-seed", "7"], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert run.computed() == STUDENT_AND_DOWN
    assert run.states()["soft_labels"] == "cached"  # no teacher inference for a student experiment


def test_teacher_change_recomputes_its_soft_labels_and_what_follows(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    run = run_cli([*cold[1], "--store", str(store), "--teacher-seed", "7"], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert run.computed() == TEACHER_AND_DOWN


def run_with_edit(cold, tmp_path, module_name: str, old: str, new: str):
    """The cold run's arguments again, on a copy of the project with one line of one module edited."""
    project = copy_project(tmp_path / "project")
    module = project / "tasks" / module_name
    source = module.read_text()
    assert old in source, f"the line to edit in {module_name} moved; update this test"
    module.write_text(source.replace(old, new))
    run = run_cli([*cold[1], "--store", str(store_copy(cold, tmp_path))], tmp_path, project=project)
    assert run.code == 0, run.output[-3000:]
    return run


def test_data_reading_helper_edit_reruns_only_fetch_when_the_rows_are_the_same(cold, tmp_path):
    run = run_with_edit(cold, tmp_path, "data/labels.py", 'raise DistilleryError(f"{where} is empty: it needs',
                        'raise DistilleryError(f"{where} has no rows: it needs')
    assert run.computed() == {"fetch_dataset"}  # its output is byte-identical: everything downstream stays cached
    assert run.summary["stages"]["fetch_dataset"]["artifact"] == cold[2].summary["stages"]["fetch_dataset"]["artifact"]


def test_soft_labels_of_other_texts_are_detected_and_never_used(cold, tmp_path):
    """A key note pointing at sound soft labels of other texts is unusable: never used."""
    store = store_copy(cold, tmp_path)
    artifacts = ArtifactStore(store)
    record = latest_run(artifacts, "emotion-smoke")
    other_texts = run_stage(augment.STAGE, augment.AugmentParams(copies=1), {"dataset": record.role("dataset")}, artifacts)
    other = run_stage(soft_labels.STAGE, soft_labels.SoftLabelParams(),
                      {"tokens": record.role("teacher_tokens"), "teacher": record.role("teacher"), "augmented": other_texts}, artifacts)
    good = record.role("soft_labels").digest
    key = artifacts.manifest(good)["key"]
    assert artifacts.made_under(key).digest == good
    artifacts.note_key(key, other)
    run = run_cli([*cold[1], "--store", str(store)], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert "not used" in run.output and "computed on other texts" in run.output
    # The refused note is not followed; the good artifact is found by its manifest and noted again.
    assert run.computed() == set() and "soft_labels: reusing soft-labels" in run.output
    assert run.summary["stages"]["soft_labels"]["artifact"] == good and artifacts.made_under(key).digest == good


def test_helper_edit_recomputes_its_stage_and_what_depends_on_it(cold, tmp_path):
    run = run_with_edit(cold, tmp_path, "stages/distil.py", "        soft = ((student_logits - teacher_logits) ** 2).mean(-1)",
                        "        soft = 0.5 * ((student_logits - teacher_logits) ** 2).mean(-1)")
    assert run.computed() == STUDENT_AND_DOWN


def test_comment_and_docstring_edits_recompute_nothing(cold, tmp_path):
    project = copy_project(tmp_path / "project")
    for name in ("stages/teacher.py", "formats.py", "measure/metrics.py"):
        module = project / "tasks" / name
        module.write_text(module.read_text() + "\n# a comment changes no behaviour\n")
    training = project / "tasks" / "training" / "loop.py"  # the loop every model trains with
    old = '"""Train in place; returns the history.'
    assert old in training.read_text(), "the docstring to edit in training.py moved; update this test"
    training.write_text(training.read_text().replace(old, '"""Train the model in place and return its history.'))
    store = store_copy(cold, tmp_path)
    run = run_cli([*cold[1], "--store", str(store)], tmp_path, project=project)
    assert run.code == 0 and run.computed() == set(), run.output[-3000:]


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip_byte"])
def test_damaged_artifact_is_recomputed_not_served(cold, tmp_path, damage):
    store = store_copy(cold, tmp_path)
    digest = cold[2].summary["stages"]["quantize"]["artifact"]
    model = store / "objects" / digest / "model.onnx"
    if damage == "delete":
        shutil.rmtree(model.parent)
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    else:
        raw = bytearray(model.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        model.write_bytes(bytes(raw))
    run = run_cli([*cold[1], "--store", str(store)], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert "quantize" in run.computed()
    assert run.computed() <= {"quantize", "evaluate"}
    assert "not used" in run.output  # logged as such
    assert ArtifactStore(store).verify(run.summary["stages"]["quantize"]["artifact"]).ok


def test_offline_hub_default_fails_at_once_naming_the_local_option(tmp_path):
    run = run_cli(["--store", str(tmp_path / "store")], tmp_path, timeout=120)
    assert run.code == 2
    assert "dair-ai/emotion" in run.output and "--data" in run.output and "DISTILLERY_DATA" in run.output
    assert not (tmp_path / "store" / "objects").exists()


def test_data_path_from_the_environment(cold, tmp_path):
    store = store_copy(cold, tmp_path)
    run = run_cli(["--smoke", "--store", str(store)], tmp_path, extra_env={"DISTILLERY_DATA": cold[1][2]})
    assert run.code == 0 and run.computed() == set(), run.output[-3000:]


def test_help_documents_every_parameter():
    out = subprocess.run([sys.executable, "flows/emotion.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    from flows.cli import DERIVED, SECTIONS, _flag
    from flows.presets import emotion

    preset = emotion()
    for section in SECTIONS:
        for field, info in type(getattr(preset, section)).model_fields.items():
            if (section, field) not in DERIVED:
                assert _flag(section, field) in out, (section, field)
                assert info.description, f"{section}.{field} has no description"
    for flag in ("--data", "--store", "--summary", "--smoke", "--device", "DISTILLERY_DATA", "DISTILLERY_STORE"):
        assert flag in out


def test_sst2_flow_shares_the_pipeline_and_its_cache_behaviour(tmp_path):
    data = REPO.parent / "shared" / "data" / "sst2"
    args = ["--smoke", "--data", str(data), "--store", str(tmp_path / "store")]
    cold = run_cli(args, tmp_path, workload="sst2")
    assert cold.code == 0, cold.output[-3000:]
    assert cold.computed() == set(FIRST_RUN_STEPS)
    assert len(cold.summary["metrics"]["student_int8"]["per_class_f1"]) == 2
    # Everything but quantize and evaluate cached: the all-cached rerun, within the changed run.
    changed = run_cli([*args, "--quantize-approach", "static"], tmp_path, workload="sst2")
    assert changed.code == 0 and changed.computed() == {"quantize", "evaluate", "judge"}, changed.output[-3000:]


def test_qat_as_the_int8_method_makes_the_runs_int8_model_the_qat_one(cold, tmp_path):
    from flows.predict import predict

    store = store_copy(cold, tmp_path)
    run = run_cli([*cold[1], "--store", str(store), "--quantize-method", "qat", "--qat-epochs", "0.5"], tmp_path)
    assert run.code == 0, run.output[-3000:]
    assert run.computed() == {"qat_student", "evaluate", "judge"} and "quantize" not in run.states()
    artifacts = ArtifactStore(store)
    qat_model = run.summary["stages"]["qat_student"]["artifact"]
    assert latest_run(artifacts, "emotion-smoke").role("student_int8").digest == qat_model
    assert artifacts.manifest(qat_model)["stage"] == "qat_student"
    assert run.summary["metrics"]["student_int8"]["size_bytes"] == artifacts.manifest(qat_model)["sizes"]["model.onnx"]
    result = predict(artifacts, run.summary["run"], ["i feel wonderful"])[0]
    assert set(result["scores"]) == {"sadness", "joy", "love", "anger", "fear", "surprise"}
