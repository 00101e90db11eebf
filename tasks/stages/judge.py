"""Stage `judge`: the new INT8 student (challenger) and the production one (champion) on the same rows.

Both classify this run's test split: the challenger from its own tokens, exactly as
`evaluate` scored it; the champion from the test texts encoded as its own tokens were.
Predictions are compared by label name, so a champion trained on other classes is simply
wrong where it cannot answer. The paired non-inferiority test (tasks/measure/paired.py)
says whether the challenger is worse by more than the tolerance. Runs when the workload
has a production model other than this run's; `decide` turns its figures (or, with no
champion, the evaluation's) into the promotion decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from artifacts import signing
from artifacts.stage import Progress, Stage
from tasks.formats import JUDGEMENT, open_tokens, read_judgement, read_labels, read_texts
from tasks.measure.metrics import classification_report, predictions
from tasks.measure.paired import macro_f1_noninferiority, noninferiority
from tasks.measure.new_texts import predicted_labels
from tasks.measure.predictors import onnx_predictor


class GateParams(BaseModel):
    """When a new INT8 student may replace the production one."""

    model_config = ConfigDict(extra="forbid")

    min_accuracy: float = Field(0.0, ge=0, le=1, description="the new INT8 student's test accuracy must reach this (0 to 1)")
    min_macro_f1: float = Field(0.0, ge=0, le=1, description="the new INT8 student's test macro-F1 must reach this (0 to 1)")
    below_teacher: float | None = Field(None, ge=0, le=1, description="floors relative to the run's own teacher: the new INT8 student's test accuracy and macro-F1 may be at most this much below the teacher's (none: no relative floor)")
    # Two points, not one: two seeds of emotion's balanced recipe differ by 0.4 points on 2,000 test rows
    # (35 against 43 discordant rows); with one point Tango's test gives p = 0.091 (the exact conditional
    # test it replaced, 0.10), so the gate would flap on seed noise. With two, p = 0.0004, and a model
    # 3 points worse is refused.
    tolerance: float = Field(0.02, ge=0, le=1, description="how much lower than the production model's the new test accuracy may be (0.02: two points), judged by a paired test")
    macro_f1_tolerance: float = Field(0.02, ge=0, le=1, description="how much lower than the production model's the new test macro-F1 may be, judged by a paired bootstrap")
    class_f1_drop: float = Field(0.10, ge=0, le=1, description="the most any one class's test F1 may fall below the production model's (a rare class dropped is refused even when the averages hold)")
    alpha: float = Field(0.05, gt=0, lt=1, description="the paired tests' significance level: promote when their p-values are below")


def _figures(predicted: list[str], truth: list[str], names: list[str]) -> dict:
    """Accuracy, macro-F1 and each class's F1 over the run's classes; a label outside them is a wrong answer."""
    index = {name: i for i, name in enumerate(names)}
    other = len(names)
    report = classification_report([index.get(p, other) for p in predicted], [index[t] for t in truth], other + 1)
    return {"accuracy": round(report["accuracy"], 6), "macro_f1": round(float(np.mean(report["per_class_f1"][:other])), 6),
            "per_class_f1": {name: round(float(f1), 6) for name, f1 in zip(names, report["per_class_f1"][:other])}}


def build_judgement(params: GateParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    names = read_labels(inputs["dataset"])
    texts = read_texts(inputs["dataset"], "test")
    tokens = open_tokens(inputs["student_tokens"])
    sequences, labels = tokens.split("test")
    if len(sequences) != len(texts):
        raise RuntimeError(f"judge: {len(sequences)} test rows in the student's tokens, {len(texts)} in the dataset; "
                           f"they must come from the same dataset artifact")
    truth = [names[i] for i in labels]
    challenger = [names[i] for i in predictions(onnx_predictor(inputs["student_int8"])[0], sequences, tokens.spec.pad_id)]
    champion = predicted_labels(inputs["production_int8"], inputs["production_tokens"], texts)
    paired = noninferiority(np.array(challenger) == np.array(truth), np.array(champion) == np.array(truth), params.tolerance)
    ids = {name: i for i, name in enumerate(names)}
    macro_f1 = macro_f1_noninferiority([ids[p] for p in challenger], [ids.get(p, len(names)) for p in champion],
                                       list(labels), len(names), params.macro_f1_tolerance)
    judgement = {"rows": len(truth), "challenger": _figures(challenger, truth, names),
                 "champion": _figures(champion, truth, names), "paired": paired, "macro_f1_paired": macro_f1}
    (out / "judgement.json").write_text(json.dumps(signing.sign(judgement, JUDGEMENT.kind), indent=2))
    progress.info(f"judge: challenger {judgement['challenger']['accuracy']:.4f}, production {judgement['champion']['accuracy']:.4f} "
                  f"on {len(truth)} test rows; p = {paired['p_value']:.3g} (tolerance {params.tolerance:g})")
    return {"challenger_accuracy": judgement["challenger"]["accuracy"], "champion_accuracy": judgement["champion"]["accuracy"],
            "p_value": paired["p_value"]}


def decide(params: GateParams, challenger: dict, judgement: dict | None, production_run: str | None,
           already_production: bool = False, teacher: dict | None = None) -> dict:
    """The promotion decision: floors on the challenger's test figures, then the paired tests against the champion.

    challenger: the evaluation's INT8 test figures (accuracy, macro_f1); teacher: the run's own
    teacher's (for `below_teacher`); judgement: what `judge` wrote (None when there is no
    champion, or it is this run's own model).
    """
    reasons = []
    if already_production:
        reasons.append(f"this run's INT8 model is already in production (run {production_run[:12]}): nothing to promote")
    if challenger["accuracy"] < params.min_accuracy:
        reasons.append(f"test accuracy {challenger['accuracy']:.4f} is below the floor {params.min_accuracy:g}")
    if challenger["macro_f1"] < params.min_macro_f1:
        reasons.append(f"test macro-F1 {challenger['macro_f1']:.4f} is below the floor {params.min_macro_f1:g}")
    if params.below_teacher is not None and teacher is not None:
        for metric, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            if challenger[metric] < teacher[metric] - params.below_teacher:
                reasons.append(f"test {label} {challenger[metric]:.4f} is more than {params.below_teacher:g} below its own "
                               f"teacher's {teacher[metric]:.4f}")
    if judgement is not None:
        reasons += _against_champion(params, judgement, production_run)
    return {
        "promote": not reasons,
        "reasons": reasons,
        "challenger": {k: challenger[k] for k in ("accuracy", "macro_f1")},
        "champion": judgement["champion"] if judgement else None,
        "paired": judgement["paired"] if judgement else None,
        "macro_f1_paired": judgement.get("macro_f1_paired") if judgement else None,
        "production_run": production_run,
        "limits": params.model_dump(),
    }


def _against_champion(params: GateParams, judgement: dict, production_run: str | None) -> list[str]:
    """Why the challenger may not replace the champion on these figures (none: it may)."""
    run = f"the production model (run {(production_run or '?')[:12]})"
    reasons = []
    paired = judgement["paired"]
    if not paired["p_value"] < params.alpha:
        reasons.append(
            f"not shown to be within {params.tolerance:g} of {run}: accuracy {judgement['challenger']['accuracy']:.4f} "
            f"against {judgement['champion']['accuracy']:.4f} on {paired['rows']} test rows, "
            f"{paired['challenger_only_right']} rows only it gets right and {paired['champion_only_right']} only "
            f"production does, p = {paired['p_value']:.3g} (needs < {params.alpha:g})")
    macro = judgement.get("macro_f1_paired")
    if macro is None:
        reasons.append("the judgement has no macro-F1 test (made by an older judge): rerun to judge it again")
    elif not macro["p_value"] < params.alpha:
        reasons.append(
            f"macro-F1 not shown to be within {params.macro_f1_tolerance:g} of {run}: "
            f"{judgement['challenger']['macro_f1']:.4f} against {judgement['champion']['macro_f1']:.4f}, "
            f"p = {macro['p_value']:.3g} (needs < {params.alpha:g})")
    mine, theirs = judgement["challenger"].get("per_class_f1", {}), judgement["champion"].get("per_class_f1", {})
    dropped = sorted((theirs[name] - mine[name], name) for name in mine if name in theirs
                     and theirs[name] - mine[name] > params.class_f1_drop)
    for drop, name in reversed(dropped):
        reasons.append(f"class {name!r}: F1 {mine[name]:.3f} against production's {theirs[name]:.3f}, a fall of "
                       f"{drop:.3f}, more than --gate-class-f1-drop {params.class_f1_drop:g}")
    return reasons


def signed_judgement(folder: Path) -> dict:
    """The judgement in `folder`, its signature checked when a team key is set (artifacts/signing.py)."""
    return signing.checked(read_judgement(folder), JUDGEMENT.kind, f"the judgement {folder.name[:12]}")


def _signature_problem(folder: Path, inputs: Mapping[str, Path]) -> str:
    """A cached judgement whose signature fails (made without the team key, or forged) is judged again."""
    try:
        signed_judgement(folder)
    except signing.SignatureError as exc:
        return str(exc)
    return ""


STAGE = Stage(
    name="judge",
    writes=JUDGEMENT,
    params=GateParams,
    inputs=("dataset", "student_tokens", "student_int8", "production_tokens", "production_int8"),
    build=build_judgement,
    libraries=("onnxruntime", "transformers", "pyarrow"),
    validate=_signature_problem,
)
