"""`python flows/predict.py`: a run's INT8 model, by alias or digest, on text from anywhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from artifacts.runs import latest_run
from artifacts.store import ArtifactRef, ArtifactStore
from conftest import OFFLINE, REPO, tree_state
from flows.predict import find_run, load_classifier, main
from tasks.formats import open_tokens, read_dataset
from tasks.onnx.session import onnx_logits, onnx_session

TEXTS = ["i feel wonderful and loved today", "this is so unfair and it makes me furious"]


SMOKE = ["--name", "emotion-smoke"]  # the cold smoke run's workload name (a smoke run goes by <name>-smoke)


def run_predict(argv: list[str], stdin: str | bytes = "") -> tuple[int, list[dict], str]:
    """`distillery predict` in-process; bytes on stdin are read as a UTF-8 pipe is."""
    out, err = io.StringIO(), io.StringIO()
    saved, sys.stderr = sys.stderr, err
    stream = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8") if isinstance(stdin, bytes) else io.StringIO(stdin)
    try:
        code = main(argv, stdin=stream, stdout=out)
    finally:
        sys.stderr = saved
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


def artifact(store, run, stage: str) -> ArtifactRef:
    digest = run.summary["stages"][stage]["artifact"]
    return ArtifactRef(kind=ArtifactStore(store).manifest(digest)["kind"], digest=digest)


def test_predicts_what_the_int8_model_computes_on_the_stored_test_ids(cold):
    store, _, run = cold
    artifacts = ArtifactStore(store)
    texts = read_dataset(artifacts.open(artifact(store, run, "fetch_dataset")))[0]["test"]["text"].tolist()[:40]
    student_tokens = open_tokens(artifacts.open(artifact(store, run, "tokenize_student")))
    ids, _ = student_tokens.split("test")
    classifier = load_classifier(artifacts, latest_run(artifacts, "emotion-smoke"))
    # The command tokenizes exactly as the pipeline did for the student (not the MPNet teacher)...
    assert [list(e) for e in classifier.encoder.encode(texts)] == [list(i) for i in ids[:40]]
    assert classifier.encoder.pad_id == student_tokens.spec.pad_id == 0
    teacher_ids, _ = open_tokens(artifacts.open(artifact(store, run, "tokenize_teacher"))).split("test")
    assert [list(i) for i in teacher_ids[:40]] != [list(i) for i in ids[:40]]
    code, results, err = run_predict(["--store", str(store), *SMOKE, *texts])
    assert code == 0, err
    # ...and labels each text with the INT8 model's own argmax on those ids.
    session = onnx_session(artifacts.open(artifact(store, run, "quantize")) / "model.onnx")
    names = classifier.labels
    for result, sequence, text in zip(results, ids, texts):
        expected = onnx_logits(session, sequence[None, :], np.ones((1, len(sequence)), dtype=np.int64))[0]
        assert result["text"] == text and result["label"] == names[int(expected.argmax())]
        assert list(result["scores"]) == names and abs(sum(result["scores"].values()) - 1) < 1e-4


def test_alias_digests_and_prefixes_name_the_same_model(cold):
    store, _, run = cold
    model = run.summary["stages"]["quantize"]["artifact"]
    names = ("emotion-smoke/latest", run.summary["run"], run.summary["run"][:12], model, model[:12])
    assert {find_run(ArtifactStore(store), name).roles["student_int8"].digest for name in names} == {model}
    outputs = [run_predict(["--store", str(store), "--model", name, *TEXTS]) for name in names]
    assert all(code == 0 for code, _, _ in outputs), [err for _, _, err in outputs]
    assert all(out[1] == outputs[0][1] for out in outputs) and len(outputs[0][1]) == 2


def test_file_and_stdin_inputs(cold, tmp_path):
    store = str(cold[0])
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    by_args = run_predict(["--store", store, *SMOKE, *TEXTS])[1]
    assert run_predict(["--store", store, *SMOKE, "--file", str(path)])[1] == by_args
    assert run_predict(["--store", store, *SMOKE], stdin="\n".join(TEXTS) + "\n")[1] == by_args
    assert run_predict(["--store", store, *SMOKE, "--file", "-"], stdin="\n".join(TEXTS))[1] == by_args


def test_the_command_line_as_users_type_it(cold):
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "flows/predict.py", "--store", str(cold[0]), *SMOKE], input="\n".join(TEXTS) + "\n",
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["text"] for line in lines] == TEXTS and all(line["label"] in line["scores"] for line in lines)


@pytest.mark.parametrize("case", [
    "unknown_alias", "empty_argument", "blank_line_in_file", "missing_file", "folder_as_file", "binary_file",
    "not_a_model", "unknown_digest", "missing_store", "args_and_file", "empty_stdin", "latin1_stdin",
    "latin1_stdin_c_locale",
])
def test_bad_input_is_refused_clearly_and_touches_nothing(cold, tmp_path, case):
    store = str(cold[0])
    teacher = cold[2].summary["stages"]["fine_tune_teacher"]["artifact"]
    text_file = tmp_path / "texts.txt"
    cases = {
        "unknown_alias": (["--model", "sst2/latest", "hi"], "", "no alias 'sst2/latest'", "emotion-smoke/latest"),
        "empty_argument": (["fine", "   "], "", "empty text at argument 2", "non-blank"),
        "blank_line_in_file": (["--file", str(text_file)], "", f"empty text at {text_file} line 2", "non-blank"),
        "missing_file": (["--file", str(tmp_path / "nope.txt")], "", "no such file", "one text per line"),
        "folder_as_file": (["--file", str(tmp_path)], "", "it is a folder", "one text per line"),
        "binary_file": (["--file", str(tmp_path / "blob.bin")], "", "not UTF-8 text", "one text per line"),
        "not_a_model": (["--model", teacher[:12], "hi"], "", "made by stage 'fine_tune_teacher', and no run record names it", "<workload>/latest"),
        "unknown_digest": (["--model", "0123456789ab", "hi"], "", "no artifact with digest '0123456789ab'", "distillery list"),
        "missing_store": (["--store", str(tmp_path / "no-store"), "hi"], "", "no artifact store at", "--store"),
        "args_and_file": (["--file", str(text_file), "hi"], "", "not both", "--file"),
        "empty_stdin": ([], "\n\n", "no text to classify", "no lines"),
        "latin1_stdin": ([], "caf\u00e9 au lait\n".encode("latin-1"), "stdin is not UTF-8", "iconv"),
        # Under a C locale Python reads stdin with surrogateescape: the bad byte arrives as a lone surrogate.
        "latin1_stdin_c_locale": ([], "caf\udce9 au lait\n", "stdin is not UTF-8", "iconv"),
    }
    text_file.write_text("first\n\nthird\n")
    (tmp_path / "blob.bin").write_bytes(bytes([0x80, 0xFF, 0x00, 0xFE]) * 64)
    argv, stdin, problem, fix = cases[case]
    if "--store" not in argv:
        argv = ["--store", store, *argv]
    before = tree_state(cold[0])
    code, results, err = run_predict(argv, stdin)
    assert code == 2 and results == []
    assert err.startswith("error: ") and problem in err and fix in err, err
    assert tree_state(cold[0]) == before



def test_serves_production_only_and_latest_only_when_asked_for(cold, tmp_path):
    from artifacts.promotions import production_alias
    from artifacts.runs import publish_run
    from conftest import store_copy

    store = store_copy(cold, tmp_path)
    artifacts = ArtifactStore(store)
    production = artifacts.resolve_alias(production_alias("emotion-smoke"))
    assert production == artifacts.resolve_alias("emotion-smoke/latest")  # the cold run, the name's first, was promoted
    code, served, err = run_predict(["--store", str(store), *SMOKE, *TEXTS])
    assert code == 0 and err == ""
    # A newer run that was not promoted (refused by the gate, say) moves latest only; predict keeps
    # serving production. (This record's "INT8 model" is the PyTorch student, which predict could not load.)
    record = find_run(artifacts, "emotion-smoke/latest")
    unpromoted = record.model_copy(update={"created": "2999-01-01T00:00:00Z",
                                           "roles": {**record.roles, "student_int8": record.roles["student"]}})
    artifacts.set_alias("emotion-smoke/latest", publish_run(artifacts, unpromoted))
    assert run_predict(["--store", str(store), *SMOKE, *TEXTS])[:2] == (0, served)
    # Where no run was ever promoted: refused, naming `distillery promote`; latest only by hand.
    artifacts.set_alias("emotion-smoke/latest", production)
    (store / "aliases" / "emotion-smoke" / "production.json").unlink()
    code, results, err = run_predict(["--store", str(store), *SMOKE, *TEXTS])
    assert code == 2 and results == []
    assert "workload 'emotion-smoke' has no production model" in err and "distillery promote emotion-smoke" in err
    assert "--model emotion-smoke/latest" in err
    assert run_predict(["--store", str(store), "--model", "emotion-smoke/latest", *TEXTS])[:2] == (0, served)
