"""Cache keys: parameters, upstream content, the stage's whole code, library versions."""

import sys
import textwrap

import pytest

from artifacts.keys import cache_key, canonical_json, code_fingerprint, forget_code
from artifacts.store import ArtifactRef
from tasks.stages import fetch, quantize
from tasks.data.sources import DataParams


@pytest.fixture
def fake_tasks_package(tmp_path, monkeypatch):
    """A throwaway copy of a stage module layout under the `tasks` package name."""
    root = tmp_path / "src"
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "__init__.py").write_text("")
    (root / "tasks" / "helpers.py").write_text(textwrap.dedent("""
        def scale(x):
            # doubles
            return x * 2
    """))
    (root / "tasks" / "stage_mod.py").write_text(textwrap.dedent("""
        from tasks.helpers import scale

        def build(x):
            return scale(x)
    """))
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "tasks" or m.startswith("tasks.")]:
        monkeypatch.delitem(sys.modules, name)
    forget_code()
    yield root / "tasks"
    forget_code()


def test_fingerprint_follows_imported_helpers(fake_tasks_package):
    before = code_fingerprint(["tasks.stage_mod"])
    assert set(before) == {"tasks.stage_mod", "tasks.helpers"}
    helper = fake_tasks_package / "helpers.py"
    helper.write_text(helper.read_text().replace("x * 2", "x * 3"))
    assert code_fingerprint(["tasks.stage_mod"]) == before  # this process still runs the old code
    forget_code()
    after = code_fingerprint(["tasks.stage_mod"])
    assert after["tasks.helpers"] != before["tasks.helpers"]
    assert after["tasks.stage_mod"] == before["tasks.stage_mod"]


def test_comment_and_layout_edits_do_not_count(fake_tasks_package):
    before = code_fingerprint(["tasks.stage_mod"])
    helper = fake_tasks_package / "helpers.py"
    helper.write_text(helper.read_text().replace("# doubles", "# multiplies by two, see issue 12\n\n"))
    forget_code()
    assert code_fingerprint(["tasks.stage_mod"]) == before


def test_docstring_edits_do_not_count_but_strings_in_the_code_do(fake_tasks_package):
    module = fake_tasks_package / "helpers.py"
    module.write_text('"""Helpers."""\n\nclass Scaler:\n    """Scales."""\n\n\n'
                      'def scale(x):\n    """Doubles x."""\n    return x * 2\n\n\ndef message():\n    return "bad input"\n')
    forget_code()
    before = code_fingerprint(["tasks.stage_mod"])
    module.write_text(module.read_text().replace("Helpers.", "Helpers for issue 12.").replace("Scales.", "Scales things.")
                      .replace("Doubles x.", "Doubles x, see the README."))
    forget_code()
    assert code_fingerprint(["tasks.stage_mod"]) == before
    module.write_text(module.read_text().replace('"bad input"', '"bad input: fix it"'))
    forget_code()
    assert code_fingerprint(["tasks.stage_mod"]) != before  # an error message may reach an artifact


def every_stage():
    from flows.dag import STAGES
    from tasks.stages import report

    return [*STAGES, report.STAGE]


def coverage() -> dict[str, set[str]]:
    """Helper module -> the stages whose fingerprint covers it (the README's change matrix)."""
    stages = every_stage()
    stage_modules = {s.build.__module__ for s in stages}
    found: dict[str, set[str]] = {}
    for stage in stages:
        for module in code_fingerprint([stage.build.__module__]):
            if module not in stage_modules:
                found.setdefault(module, set()).add(stage.name)
    return found


def test_a_stage_imports_helpers_never_another_stage():
    stages = every_stage()
    stage_modules = {s.build.__module__ for s in stages}
    for stage in stages:
        covered = set(code_fingerprint([stage.build.__module__]))
        assert covered & stage_modules == {stage.build.__module__}, stage.name
        assert not any(name.startswith(("artifacts", "flows")) for name in covered)


def test_helper_edits_reach_exactly_the_stages_that_run_them():
    matrix = coverage()
    print("\nFIGURE change matrix (helper: stages it recomputes):\n" + "\n".join(
        f"  {module}: {', '.join(sorted(names))}" for module, names in sorted(matrix.items())))
    assert matrix["tasks.data.sources"] == matrix["tasks.data.files"] == matrix["tasks.data.labels"] == {"fetch_dataset"}  # reading the data: only the stage that reads it
    assert matrix["tasks.data.phrases"] == {"fetch_dataset", "augment_data"}  # sentence holdout; sentence-only variants
    assert matrix["tasks.measure.predictors"] == {"evaluate", "compare_data", "judge"}
    assert matrix["tasks.measure.new_texts"] == {"compare_data", "judge"}  # the production model on new texts
    assert matrix["tasks.onnx.graph"] == {"export_onnx", "qat_student"}
    assert matrix["tasks.onnx.session"] == {"export_onnx", "quantize", "evaluate", "qat_student", "compare_data", "judge"}
    assert matrix["tasks.training.loop"] == {"fine_tune_teacher", "soft_labels", "distil_student", "qat_student"}
    assert matrix["tasks.data.encoding"] == {"tokenize", "augment_data", "soft_labels", "distil_student", "compare_data", "judge"}
    assert matrix["tasks.data.checks"] == {"check_data", "compare_data"}
    assert matrix["tasks.training.device"] == {"fine_tune_teacher", "soft_labels", "distil_student", "qat_student",
                                               "teacher_features"}
    # The frozen teacher's helpers: the features it caches and the teacher trained above them, nothing else.
    assert matrix["tasks.models.frozen"] == {"fine_tune_teacher", "teacher_features"}
    assert matrix["tasks.training.cached"] == {"fine_tune_teacher"}
    assert "quantize" not in matrix["tasks.models.loading"]  # it never loads a PyTorch model
    assert len(matrix["tasks.formats"]) == len(every_stage())  # every stage reads or writes artifacts


def test_key_changes_with_each_input_and_only_then():
    base = dict(stage="quantize", params={"approach": "dynamic"}, upstream={"onnx": "a" * 64},
                code={"tasks.stages.quantize": "1"}, versions={"onnxruntime": "1.31.1"})
    key = cache_key(**base)
    assert cache_key(**base) == key
    for field, value in [("params", {"approach": "static"}), ("upstream", {"onnx": "b" * 64}),
                         ("code", {"tasks.stages.quantize": "2"}), ("versions", {"onnxruntime": "1.32"}),
                         ("stage", "evaluate")]:
        assert cache_key(**{**base, field: value}) != key, field


def test_canonical_json_is_stable():
    assert canonical_json({"b": 1, "a": [3.0, 2]}) == canonical_json({"a": [3, 2], "b": 1})
    with pytest.raises(TypeError, match="sets"):
        canonical_json({"labels": {"a", "b"}})


def test_stage_key_depends_on_upstream_digest_not_path():
    params = quantize.QuantizeParams()
    one = {"onnx": ArtifactRef(kind="onnx", digest="a" * 64), "tokens": ArtifactRef(kind="tokens", digest="c" * 64)}
    two = {**one, "onnx": ArtifactRef(kind="onnx", digest="b" * 64)}
    assert quantize.STAGE.key(params, one) == quantize.STAGE.key(params, one)
    assert quantize.STAGE.key(params, one) != quantize.STAGE.key(params, two)
    assert quantize.STAGE.key(params, one) != quantize.STAGE.key(quantize.QuantizeParams(approach="static"), one)


def test_fetch_key_follows_file_content(emotion_slice):
    params = DataParams(source=str(emotion_slice))
    before = fetch.STAGE.key(params, {})
    test_file = emotion_slice / "test.txt"
    test_file.write_text(test_file.read_text() + "i feel fine;joy\n")
    assert fetch.STAGE.key(params, {}) != before
