"""Bad input, through the command line as users meet it: refused before any training,
with the problem and the fix named, exit code 2, and the store left exactly as it was.

Each case runs the laptop command's own entry (`run_command`, what flows/emotion.py calls)
in this process, with the flow itself replaced by a failure: a case that got past the
checks fails the test instead of training. One case goes through the real command in a
subprocess, to show the exit status a shell sees; a subprocess per case (each booting
its temporary Prefect server) cost the suite about four minutes.
"""

import os

import pytest
from conftest import run_cli, store_copy, tree_state, write_emotion_slice


def broken_data(root, emotion_dir, name, change):
    folder = write_emotion_slice(emotion_dir, root / name, {"train": 40, "val": 10, "test": 10})
    change(folder)
    return str(folder)


def _append(file, data: bytes):
    return lambda f: (f / file).write_bytes((f / file).read_bytes() + data)


DATA_CASES = {
    # name: (how the data folder is broken, extra flags, words of the problem, words of the fix)
    "no test split": (lambda f: (f / "test.txt").unlink(), [], "no test split", "--data-splits"),
    "label outside the set": (_append("val.txt", b"i am thrilled;ecstasy\n"), [], "outside the label set", "--data-label-names"),
    "empty split": (lambda f: (f / "test.txt").write_text("text;label_name\n"), [], "is empty", "at least one labelled row"),
    "empty text": (_append("train.txt", b"  ;joy\n"), [], "empty text", "remove those rows"),
    "not utf-8": (_append("train.txt", "na\u00efve;joy\n".encode("latin-1")), [], "not UTF-8", "iconv"),
    "line without label": (_append("train.txt", b"no separator here\n"), [], "has no ';'", "text;label"),
    "unknown label column": (lambda f: None, ["--data-label-column", "emotion"], "label column 'emotion' is not in", "--data-label-column"),
    "unsupported format": (lambda f: [(f / n).rename(f / n.replace(".txt", ".xlsx")) for n in ("train.txt", "val.txt", "test.txt")],
                           [], "no train split", ".parquet"),
    "malformed csv": (lambda f: [(f / n).unlink() for n in ("train.txt", "val.txt", "test.txt")] and
                      [(f / f"{s}.csv").write_text('text,label\n"never closed,joy\nfine,joy\n') for s in ("train", "test")],
                      [], "cannot parse", "fix the file"),
}

FLAG_CASES = {
    "missing data path": (["--data", "/nonexistent/emotion"], "does not exist", "--data"),
    "negative epochs": (["--teacher-epochs", "-1"], "--teacher-epochs", "greater than 0"),
    "unknown choice": (["--quantize-approach", "float8"], "invalid choice", "dynamic"),
    "conflicting options": (["--quantize-approach", "dynamic", "--quantize-quant-format", "QDQ"], "static quantization only", "approach to static"),
    "impossible length": (["--tokenize-max-length", "4"], "--tokenize-max-length", "greater than or equal to 8"),
    "malformed JSON": (["--data-splits", "{train: train"], "--data-splits", "expected JSON"),
    "student deeper than its init": (["--student-layers", "0,1,2"], "do not fit student init 'tiny', which has 2 layers", "--student-layers"),
    "student layers outside minilm": (["--student-init", "minilm", "--student-layers", "0,6"], "which has 6 layers", "--student-layers 0,2,4"),
    "student cut from a teacher too shallow": (["--student-init", "teacher", "--student-layers", "0,2"], "do not fit the teacher", "--student-layers"),
    "hidden states across tokenizers": (["--student-hidden-weight", "1"], "they cut text differently", "set those weights to 0"),
    "unknown student init offline": (["--student-init", "nobody/no-such-student"], "Hugging Face Hub", "'minilm'"),
    "student layers out of order": (["--student-layers", "1,0"], "distinct, ascending", "--student-layers"),
    "missing model folder": (["--teacher", "./no-such-checkpoint"], "does not exist", "'minilm'"),
    "unknown hub model offline": (["--teacher", "nobody/no-such-model"], "Hugging Face Hub", "'minilm'"),
    "gate tolerance above one": (["--gate-tolerance", "2"], "--gate-tolerance", "less than or equal to 1"),
    "unknown anomaly to allow": (["--data-allow", "overlap,typo"], "unknown anomaly 'typo'", "allow any of empty_class"),
}


@pytest.fixture(scope="module")
def guarded_store(cold, tmp_path_factory):
    """A store that already holds a full run, which no bad input may touch."""
    return store_copy(cold, tmp_path_factory.mktemp("guarded"))


def _flow_must_not_run(**parameters):
    raise AssertionError("the bad input reached the flow: it must be refused before any stage runs")


def command_in_process(argv: list[str], capsys, env: dict | None = None) -> tuple[int, str]:
    """`python flows/emotion.py ARGV` in this process: its exit status and everything it printed."""
    import flows.pipeline
    from flows.cli import run_command

    saved = dict(os.environ)  # the command sets a few defaults of its own (quiet logs, no telemetry)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(flows.pipeline, "distillery", _flow_must_not_run)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            try:
                code = run_command(argv, preset="emotion")
            except SystemExit as exc:  # argparse's own refusals
                code = exc.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def refuse(args, store, problem, fix, capsys, env=None):
    before = tree_state(store)
    code, message = command_in_process([*args, "--store", str(store)], capsys, env)
    assert code == 2, message[-2000:]
    assert problem in message and fix in message, message[-2000:]
    assert "Traceback" not in message
    assert tree_state(store) == before


def test_the_command_refuses_bad_input_with_exit_status_2(tmp_path, emotion_dir, guarded_store):
    """The real command in its own process: the status and message a shell sees, nothing stored."""
    data = broken_data(tmp_path, emotion_dir, "data", lambda f: (f / "test.txt").unlink())
    before = tree_state(guarded_store)
    run = run_cli(["--smoke", "--data", data, "--store", str(guarded_store)], tmp_path, timeout=180)
    assert run.code == 2, run.output[-2000:]
    assert "no test split" in run.output and "--data-splits" in run.output, run.output[-2000:]
    assert "Traceback" not in run.output and "fine_tune_teacher:" not in run.output
    assert tree_state(guarded_store) == before


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_is_refused(case, tmp_path, emotion_dir, guarded_store, capsys):
    change, flags, problem, fix = DATA_CASES[case]
    data = broken_data(tmp_path, emotion_dir, "data", change)
    refuse(["--smoke", "--data", data, *flags], guarded_store, problem, fix, capsys)


def test_student_init_whose_tokenizer_or_weights_are_missing_is_refused(tmp_path, emotion_dir, guarded_store, capsys):
    from tasks.models.loading import load_classifier, load_config

    no_tokenizer = tmp_path / "weights-without-tokenizer"
    load_classifier("tiny", ["a", "b"]).save_pretrained(no_tokenizer)
    refuse(["--smoke", "--data", str(emotion_dir), "--student-init", str(no_tokenizer)], guarded_store,
           "its tokenizer cannot be loaded", "tokenizer.save_pretrained", capsys)
    no_weights = tmp_path / "config-only"
    load_config("tiny").save_pretrained(no_weights)
    refuse(["--smoke", "--data", str(emotion_dir), "--student-init", str(no_weights)], guarded_store,
           "holds no model weights", "save_pretrained", capsys)


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_configuration_or_model_is_refused(case, emotion_dir, guarded_store, capsys):
    flags, problem, fix = FLAG_CASES[case]
    data = [] if "--data" in flags else ["--data", str(emotion_dir)]
    refuse(["--smoke", *data, *flags], guarded_store, problem, fix, capsys)


@pytest.mark.parametrize("lease", ["soon", "1"])
def test_bad_lock_lease_is_refused(lease, emotion_dir, guarded_store, capsys):
    refuse(["--smoke", "--data", str(emotion_dir)], guarded_store,
           f"DISTILLERY_LOCK_LEASE_SECONDS={lease!r}", "at least 3", capsys, env={"DISTILLERY_LOCK_LEASE_SECONDS": lease})
