"""flows/dag.py: the pipeline declared once; the run order, step names, roles and the README's
diagram all come from its table."""

from __future__ import annotations

from conftest import REPO
from flows.dag import GIVEN_ROLES, ROLES, STEP_NAMES, STEPS, diagram, run_dag
from flows.presets import build_config, emotion


def walk(config, given=None):
    """Which steps run, in order, and what each is handed (role artifacts stood in by role names)."""
    calls = []

    def call(step, stage, params, **inputs):
        calls.append((step, stage.name, type(params).__name__, inputs))
        return next(s.fills for s in STEPS if s.name == step)

    return calls, run_dag(config, call, given=given)


# Steps that compare with the workload's production run: only a run that has one takes them.
WITH_PRODUCTION = {"compare_data", "judge"}


# The DAG is walked, never run: a local source (never read here) keeps the offline Hub refusal out of the way.
LOCAL_COPY = "./a-local-copy"


def test_default_run_takes_the_default_steps_in_order_and_fills_every_role():
    calls, roles = walk(build_config(emotion(), LOCAL_COPY, smoke=True))
    assert [c[0] for c in calls] == [n for n in STEP_NAMES if n not in WITH_PRODUCTION]
    assert tuple(roles) == tuple(r for r in ROLES if r not in ("data_comparison", "judgement", "teacher_features"))  # in DAG order
    step = {c[0]: c for c in calls}
    assert step["tokenize_student"][1] == "tokenize" and step["tokenize_student"][2] == "TokenizeParams"
    assert step["distil_student"][3] == {"tokens": "student_tokens", "soft_labels": "soft_labels", "augmented": "augmented",
                                         "teacher": "teacher", "teacher_tokens": "teacher_tokens"}


def test_conditions_skip_or_swap_steps():
    shared = build_config(emotion(), LOCAL_COPY, smoke=True, overrides={"student": {"init": "teacher"}})
    calls, roles = walk(shared)
    assert "tokenize_student" not in [c[0] for c in calls] and roles["student_tokens"] == roles["teacher_tokens"]
    qat = build_config(emotion(), LOCAL_COPY, smoke=True, overrides={"quantize": {"method": "qat"}})
    names = [c[0] for c in walk(qat)[0]]
    assert "qat_student" in names and "quantize" not in names
    default = [n for n in STEP_NAMES if n not in WITH_PRODUCTION]
    assert names.index("qat_student") == default.index("quantize")
    # Frozen teacher layers: their features are computed first, and the teacher reads them.
    frozen = build_config(emotion(), LOCAL_COPY, smoke=True, overrides={"teacher": {"frozen_layers": 1}})
    calls = walk(frozen)[0]
    names = [c[0] for c in calls]
    assert names.index("cache_teacher_features") == names.index("fine_tune_teacher") - 1
    assert {c[0]: c for c in calls}["fine_tune_teacher"][3] == {"tokens": "teacher_tokens", "features": "teacher_features"}
    assert {c[0]: c for c in walk(shared)[0]}["fine_tune_teacher"][3] == {"tokens": "teacher_tokens"}  # none read without


def test_a_production_run_on_other_data_and_another_model_adds_the_comparison_and_the_judge():
    config = build_config(emotion(), LOCAL_COPY, smoke=True)
    other = {role: f"production's {role}" for role in GIVEN_ROLES}
    calls, roles = walk(config, given=other)
    assert [c[0] for c in calls] == list(STEP_NAMES)
    assert tuple(roles) == tuple(r for r in ROLES if r != "teacher_features") and not set(GIVEN_ROLES) & set(roles)  # given roles are read, not recorded
    step = {c[0]: c for c in calls}
    assert step["judge"][3] == {"dataset": "dataset", "student_tokens": "student_tokens", "student_int8": "student_int8",
                                "production_tokens": "production's production_tokens",
                                "production_int8": "production's production_int8"}
    # The production run is this data and this model (stand-ins equal the run's own): nothing to compare or judge.
    same = {"production_dataset": "dataset", "production_tokens": "student_tokens", "production_int8": "student_int8"}
    assert not WITH_PRODUCTION & {c[0] for c in walk(config, given=same)[0]}


def test_every_step_reads_roles_filled_before_it_and_feeds_every_stage_input():
    filled = set(GIVEN_ROLES)
    for step in STEPS:
        assert set(step.reads) == set(step.stage.inputs), step.name
        assert set(step.reads.values()) <= filled, step.name
        filled.add(step.fills)


def test_the_readme_shows_the_dag_as_the_table_declares_it():
    assert f"```\n{diagram()}\n```" in (REPO / "README.md").read_text()
