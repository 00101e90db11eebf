"""The `distillery` command: every verb's help, and the verbs on the cold smoke run's store.

The verbs run in this process (`flows.console.main`, what the console script calls);
one test starts the module as a user would, to check the entry point itself. Nothing
here changes the cold store: the tests that read it check that it is left as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts.store import ArtifactStore
from conftest import EMOTION_LABELS, OFFLINE, REPO, tree_state
from flows import console
from flows.pipeline import STEP_NAMES

VERB_OPTIONS = {
    # verb: options its help must show
    "run": ["--preset", "--name", "--data", "--data-text-column", "--data-label-column", "--smoke", "--summary",
            "--quantize-approach", "DISTILLERY_STORE"],
    "status": ["--preset", "--name", "--data", "--smoke", "--student-seed", "--quantize-approach"],
    "predict": ["--name", "--model", "--file", "--store"],
    "report": ["--name", "--open", "--store"],
    "explain": ["--preset", "--name", "--data", "--smoke", "--student-seed", "--quantize-approach", "--store"],
    "list": ["--store"],
    "verify": ["--repair", "--store"],
    "gc": ["--delete", "--min-age-minutes", "--store"],
}


def distillery(capsys, *args: str) -> tuple[int, str, str]:
    code = console.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_lists_its_verbs_as_a_user_starts_it():
    out = subprocess.run([sys.executable, "-m", "flows.console", "--help"], cwd=REPO, capture_output=True, text=True,
                         env={**__import__("os").environ, **OFFLINE}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: distillery VERB")
    for verb in VERB_OPTIONS:
        assert f"\n  {verb} " in out.stdout, verb


@pytest.mark.parametrize("verb", sorted(VERB_OPTIONS))
def test_every_verb_has_help(capsys, verb):
    code, out, _ = distillery(capsys, verb, "--help")
    assert code == 0
    assert out.startswith(f"usage: distillery {verb}")
    out = " ".join(out.split())  # help wraps at the terminal's width
    for option in VERB_OPTIONS[verb]:
        assert option in out, (verb, option)


def test_run_help_shows_the_chosen_presets_values(capsys):
    generic, sst2 = (" ".join(distillery(capsys, "run", *flags, "--help")[1].split()) for flags in ([], ["--preset", "sst2"]))
    assert "preset: stanfordnlp/sst2" in sst2 and "preset: negative,positive" in sst2
    assert "preset: stanfordnlp/sst2" not in generic and "needs --data" in generic


def test_unknown_verb_and_no_verb_are_refused(capsys):
    code, _, err = distillery(capsys, "train")
    assert code == 2 and "unknown verb 'train'" in err and "run, status" in err
    code, _, err = distillery(capsys)
    assert code == 2 and "usage: distillery VERB" in err


@pytest.fixture(scope="module")
def smoke_store(cold):
    """The cold run's store and its arguments, and the store's state, to prove the verbs leave it as it was."""
    store, args, run = cold
    state = tree_state(store)
    yield store, args, run
    assert tree_state(store) == state, "a console verb changed the cold run's store"


def status(capsys, smoke_store, *flags: str) -> tuple[dict[str, str], str]:
    store, args, _ = smoke_store
    code, out, err = distillery(capsys, "status", "--preset", "emotion", *args, "--store", store, *flags)
    assert code == 0, err
    steps = {}
    for line in out.splitlines()[1:-1]:
        step, rest = line.split(maxsplit=1)
        steps[step] = rest
    return steps, out


def test_status_of_the_same_flags_is_all_cached(capsys, smoke_store):
    steps, out = status(capsys, smoke_store)
    # The run is production itself: nothing to compare its data with, nor to judge its model against.
    assert list(steps) == [s for s in STEP_NAMES if s not in ("compare_data", "judge")]
    assert all(state.startswith("cached") for state in steps.values()), out
    assert out.splitlines()[0].startswith("workload emotion-smoke (preset emotion)")
    assert out.splitlines()[-1] == "11 of 11 steps cached; nothing to recompute"


def test_status_after_a_parameter_change_says_which_steps_rerun_and_why(capsys, smoke_store):
    steps, out = status(capsys, smoke_store, "--quantize-approach", "static", "--quantize-quant-format", "QDQ")
    assert steps["quantize"].startswith("would run") and "parameter approach: dynamic -> static" in steps["quantize"]
    assert "parameter quant_format: None -> QDQ" in steps["quantize"]
    assert steps["evaluate"] == "would run  upstream quantize reruns"
    # A new INT8 model would be judged against the production one (the cold run's).
    assert steps["judge"].startswith("would run") and "compare_data" not in steps
    assert all(steps[s].startswith("cached") for s in steps if s not in ("quantize", "evaluate", "judge"))
    assert out.splitlines()[-1] == "9 of 12 steps cached; 3 would run: quantize, evaluate, judge"
    steps, out = status(capsys, smoke_store, "--student-seed", "7")
    assert "parameter seed: 42 -> 7" in steps["distil_student"]
    assert out.splitlines()[-1].endswith("5 would run: distil_student, export_onnx, quantize, evaluate, judge")


def test_status_under_another_name_shares_the_cache_not_the_comparison(capsys, smoke_store):
    steps, out = status(capsys, smoke_store, "--name", "emotion-b", "--student-seed", "7")
    assert out.splitlines()[0].startswith("workload emotion-b-smoke (preset emotion)")
    assert steps["soft_labels"].startswith("cached")  # made by the emotion run: the cache knows no names
    assert steps["distil_student"] == "would run  no earlier artifact for workload 'emotion-b-smoke'"


def test_status_refuses_bad_input_like_run(capsys, smoke_store):
    store, args, _ = smoke_store
    code, _, err = distillery(capsys, "status", "--preset", "emotion", *args, "--store", store, "--name", "Emotion 2")
    assert code == 2 and "invalid workload name 'Emotion 2'" in err and "--name emotion-2" in err


def test_report_prints_the_latest_reports_path_and_opens_it(capsys, smoke_store, monkeypatch):
    store, _, run = smoke_store
    code, out, _ = distillery(capsys, "report", "--store", store, "--name", "emotion-smoke")
    path = out.strip()
    assert code == 0 and path == f"{run.summary['report']['location']}/report.md"
    assert open(path).read().startswith("# distillery report: emotion-smoke")
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda uri: opened.append(uri) or True)
    assert distillery(capsys, "report", "--store", store, "--name", "emotion-smoke", "--open")[0] == 0
    assert opened == [Path(path).resolve().as_uri()]
    code, _, err = distillery(capsys, "report", "--store", store, "--name", "reviews")
    assert code == 2 and "no report for workload 'reviews'" in err and "workloads with a report: emotion-smoke" in err


def test_predict_by_name_or_alias_is_the_same_model(capsys, smoke_store):
    store = smoke_store[0]
    by_name = distillery(capsys, "predict", "--store", store, "--name", "emotion-smoke", "i feel wonderful")
    by_alias = distillery(capsys, "predict", "--store", store, "--model", "emotion-smoke/latest", "i feel wonderful")
    assert by_name[0] == 0 and by_name[1] == by_alias[1]
    assert set(json.loads(by_name[1])["scores"]) == set(EMOTION_LABELS)
    code, _, err = distillery(capsys, "predict", "--store", store, "--name", "emotion-smoke", "--model", "emotion-smoke/latest", "hi")
    assert code == 2 and "not both" in err


def test_store_verbs_are_the_cache_commands_and_explain_takes_the_run_flags(capsys, smoke_store):
    store, args, run = smoke_store
    code, out, _ = distillery(capsys, "list", "--store", store)
    assert code == 0 and "13 artifacts" in out and "alias emotion-smoke/latest" in out
    code, out, _ = distillery(capsys, "verify", "--store", store)
    assert code == 0 and out.strip().endswith("13 artifacts checked, 0 broken")
    code, out, _ = distillery(capsys, "gc", "--store", store)  # a dry run: lists, deletes nothing
    assert code == 0 and "would delete 0 artifacts" in out
    code, out, _ = distillery(capsys, "explain", "--preset", "emotion", "--store", store, "--smoke", "--data", args[2],
                              "--quantize-approach", "static")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert code == 0 and "parameter approach: dynamic -> static" in lines["quantize"]
    assert ArtifactStore(store).resolve_alias("emotion-smoke/latest").digest == run.summary["run"]
