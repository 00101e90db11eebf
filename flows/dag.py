"""The pipeline, declared once, as data: every step, the stage it runs, where its
parameters come from, which artifacts it reads and the role its own artifact plays.

Everything else is derived from `STEPS`: the order the flow runs them in (`run_dag`,
used by the flow, `explain`/`status` and bench/pipeline.py alike), the step names
(`STEP_NAMES`), the roles a run record holds (`ROLES`), and the diagram in the README
(`diagram()`, which tests/test_dag.py holds the README to).

A role names an artifact by what it is to the run (`student_tokens`, `student_int8`);
predict, the benchmarks and explain read roles from a run's record. A step reads its
stage's inputs from roles: `reads={"tokens": "student_tokens"}` hands the artifact in
role `student_tokens` to the stage's input `tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from artifacts.stage import Stage
from artifacts.store import ArtifactRef
from flows.config import PipelineConfig
from tasks.stages import (augment, check_data, compare_data, distil, evaluate, export, fetch, judge, qat, quantize,
                          soft_labels, teacher, teacher_features, tokenize)


@dataclass(frozen=True)
class Step:
    name: str
    stage: Stage
    section: str  # the PipelineConfig attribute holding its parameters
    fills: str  # the role of the artifact it makes
    reads: dict[str, str] = field(default_factory=dict)  # stage input -> role that feeds it
    when: str = ""  # a condition on the config, in words (RUNS_WHEN holds its test); "": always
    otherwise: str = ""  # when it does not run: the role that fills its role instead ("": none)
    takes_place_of: str = ""  # an alternative to that step, not part of the default DAG
    opt_in: bool = False  # runs only when a setting off by default turns it on: not part of the default DAG either


# Roles a run is given rather than makes: the workload's production run's artifacts
# (artifacts/promotions.py), when it has one. The data comparison and the promotion gate read them.
GIVEN_ROLES: tuple[str, ...] = ("production_dataset", "production_tokens", "production_int8")
PRODUCTION_ROLES = {"production_dataset": "dataset", "production_tokens": "student_tokens", "production_int8": "student_int8"}


def _production_differs(roles: dict, own: str, production: str) -> bool:
    return production in roles and roles[production] != roles[own]


# Conditions a step runs under, by the words `Step.when` uses: (config, roles so far) -> bool.
RUNS_WHEN: dict[str, Callable[[PipelineConfig, dict], bool]] = {
    "the student's tokenizer differs": lambda config, roles: not config.shared_tokenizer,
    "--teacher-frozen-layers above 0": lambda config, roles: config.teacher.frozen_layers > 0,
    "--quantize-method ptq": lambda config, roles: config.quantize.method != "qat",
    "--quantize-method qat": lambda config, roles: config.quantize.method == "qat",
    "a production model was trained on other data": lambda config, roles: _production_differs(roles, "dataset", "production_dataset"),
    "a production model other than this run's": lambda config, roles: _production_differs(roles, "student_int8", "production_int8"),
}

STEPS: tuple[Step, ...] = (
    Step("fetch_dataset", fetch.STAGE, "data", fills="dataset"),
    Step("check_data", check_data.STAGE, "checks", fills="data_checks", reads={"dataset": "dataset"}),
    Step("compare_data", compare_data.STAGE, "checks", fills="data_comparison",
         reads={"dataset": "dataset", "production_dataset": "production_dataset", "production_tokens": "production_tokens",
                "production_int8": "production_int8"}, when="a production model was trained on other data"),
    Step("tokenize_teacher", tokenize.STAGE, "teacher_tokens", fills="teacher_tokens", reads={"dataset": "dataset"}),
    Step("tokenize_student", tokenize.STAGE, "student_tokens", fills="student_tokens", reads={"dataset": "dataset"},
         when="the student's tokenizer differs", otherwise="teacher_tokens"),
    Step("cache_teacher_features", teacher_features.STAGE, "teacher_features", fills="teacher_features",
         reads={"tokens": "teacher_tokens"}, when="--teacher-frozen-layers above 0", opt_in=True),
    Step("fine_tune_teacher", teacher.STAGE, "teacher", fills="teacher",
         reads={"tokens": "teacher_tokens", "features": "teacher_features"}),
    Step("augment_data", augment.STAGE, "augment", fills="augmented", reads={"dataset": "dataset"}),
    Step("soft_labels", soft_labels.STAGE, "soft_labels", fills="soft_labels",
         reads={"tokens": "teacher_tokens", "teacher": "teacher", "augmented": "augmented"}),
    Step("distil_student", distil.STAGE, "student", fills="student",
         reads={"tokens": "student_tokens", "soft_labels": "soft_labels", "augmented": "augmented", "teacher": "teacher",
                "teacher_tokens": "teacher_tokens"}),
    Step("export_onnx", export.STAGE, "export", fills="student_onnx", reads={"model": "student", "tokens": "student_tokens"}),
    Step("quantize", quantize.STAGE, "quantize", fills="student_int8", reads={"onnx": "student_onnx", "tokens": "student_tokens"},
         when="--quantize-method ptq"),
    Step("qat_student", qat.STAGE, "qat", fills="student_int8", reads={"tokens": "student_tokens", "student": "student"},
         when="--quantize-method qat", takes_place_of="quantize"),
    Step("evaluate", evaluate.STAGE, "evaluate", fills="evaluation",
         reads={"teacher_tokens": "teacher_tokens", "teacher": "teacher", "student_tokens": "student_tokens",
                "student": "student", "student_int8": "student_int8"}),
    Step("judge", judge.STAGE, "gate", fills="judgement",
         reads={"dataset": "dataset", "student_tokens": "student_tokens", "student_int8": "student_int8",
                "production_tokens": "production_tokens", "production_int8": "production_int8"},
         when="a production model other than this run's"),
)

# The steps of a run with the defaults, in order (an alternative such as qat_student excluded, and an
# opt-in step such as cache_teacher_features); ALL_STEP_NAMES: every step any configuration may run.
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS if not step.takes_place_of and not step.opt_in)
ALL_STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
# Every role a run record may hold, in DAG order (the run's report is added by the flow).
ROLES: tuple[str, ...] = tuple(dict.fromkeys(step.fills for step in STEPS))
# Steps that check the data: a finding they make that is not allowed stops the run (flows/pipeline.py).
DATA_CHECK_STEPS: tuple[str, ...] = ("check_data", "compare_data")
STAGES: tuple[Stage, ...] = tuple(dict.fromkeys(step.stage for step in STEPS))

# call(step, stage, params, **inputs) -> ArtifactRef: a Prefect task (flows/pipeline.py
# StageRunner), a dry run (explain) or a plain call (bench/pipeline.py).
CallStage = Callable[..., Any]


def runs(step: Step, config: PipelineConfig, roles: dict | None = None) -> bool:
    return not step.when or RUNS_WHEN[step.when](config, roles or {})


# after(step name, its artifact): called after each step that ran; may stop the run by raising.
AfterStep = Callable[[str, Any], None]


def run_dag(config: PipelineConfig, call: CallStage, given: dict[str, Any] | None = None,
            after: AfterStep | None = None) -> dict[str, ArtifactRef]:
    """Every step that runs under `config`, in order, each fed the roles it reads; returns each role's artifact.

    given: roles the run does not make (GIVEN_ROLES: the production run's artifacts), if any."""
    unknown = set(given or {}) - set(GIVEN_ROLES)
    if unknown:
        raise ValueError(f"run_dag: {sorted(unknown)} are not roles a run is given ({GIVEN_ROLES})")
    roles: dict[str, Any] = dict(given or {})
    for step in STEPS:
        if runs(step, config, roles):
            # An optional input whose role no step filled (its step did not run) is left out.
            inputs = {name: roles[role] for name, role in step.reads.items()
                      if role in roles or name not in step.stage.optional}
            roles[step.fills] = call(step.name, step.stage, getattr(config, step.section), **inputs)
            if after is not None:
                after(step.name, roles[step.fills])
        elif step.otherwise:
            roles[step.fills] = roles[step.otherwise]
    return {role: ref for role, ref in roles.items() if role not in GIVEN_ROLES}


def diagram() -> str:
    """The DAG as text, one step a line: what it reads, the role it fills, when it runs."""
    lines = []
    width = max(len(f"{s.name}({', '.join(dict.fromkeys(s.reads.values()))})") for s in STEPS)
    for step in STEPS:
        call = f"{step.name}({', '.join(dict.fromkeys(step.reads.values()))})"
        note = ""
        if step.when:
            note = f"  when {step.when}" + (f"; else {step.otherwise}" if step.otherwise else "")
            if step.takes_place_of:
                note += f", in place of {step.takes_place_of}"
        lines.append(f"{call:<{width}} -> {step.fills}{note}")
    lines.append(f"{'report(evaluation)':<{width}} -> report (every run, cached or not)")
    return "\n".join(lines)
