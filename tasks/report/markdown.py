"""report.md: the models, the student against its teacher, per-class F1, confusion, stages."""

from __future__ import annotations

from typing import Mapping

from tasks.report.rows import FINAL_MODEL, MODEL_COLUMNS, StageRun, model_rows, readable_model_rows


SMOKE_NOTE = "smoke run: tiny models on a data slice, accuracy means nothing"


def report_title(workload: str, smoke: bool) -> str:
    return f"distillery report: {workload}" + (f" ({SMOKE_NOTE})" if smoke else "")


def shortfall_section(evaluation: dict) -> list[str]:
    """The INT8 student against its teacher on validation; a loud heading when it falls short."""
    gap = evaluation.get("shortfall")
    if gap is None:  # an evaluation made before shortfalls were measured
        return []
    worst = gap["worst_class"]
    heading = ("## WARNING: the INT8 student falls short of its teacher" if gap["flagged"]
               else "## The INT8 student against its teacher")
    lines = ["", heading, "",
             f"On validation ({gap['rows']} rows): accuracy {gap['student_int8']['accuracy']:.2%} against the teacher's "
             f"{gap['teacher']['accuracy']:.2%}, macro-F1 "
             f"{gap['student_int8']['macro_f1']:.4f} against {gap['teacher']['macro_f1']:.4f}; worst class "
             f"{markdown_text(worst['label'])}: F1 {worst['student_f1']:.3f} against {worst['teacher_f1']:.3f}. "
             f"Flagged beyond {gap['limits']['accuracy_points']:g} accuracy points below the teacher, or any class's F1 "
             f"more than {gap['limits']['class_f1']:g} below."]
    if gap["flagged"]:
        lines += [""] + [f"- {markdown_text(reason)}" for reason in gap["reasons"]]
        lines += ["", "A longer student schedule (--student-min-steps), more augmented copies, or class-balanced "
                      "training may close it; see docs/ for what was measured."]
    return lines


def decision_section(decision: dict) -> list[str]:
    """Whether the run's INT8 student was promoted to production, on what figures, and why not."""
    if not decision:
        return []
    promoted = decision["promote"]
    lines = ["", "## Promoted to production" if promoted else "## NOT promoted: production is unchanged", ""]
    challenger = decision["challenger"]
    figures = f"New INT8 student on test: accuracy {challenger['accuracy']:.2%}, macro-F1 {challenger['macro_f1']:.4f}"
    if decision.get("champion"):
        paired = decision["paired"]
        figures += (f"; production model (run `{decision['production_run'][:12]}`) on the same {paired['rows']} rows: "
                    f"accuracy {decision['champion']['accuracy']:.2%}, macro-F1 {decision['champion']['macro_f1']:.4f}. "
                    f"{paired['challenger_only_right']} rows only the new model gets right, {paired['champion_only_right']} "
                    f"only production does; {paired['test']}, margin {paired['margin']:g}: p = {paired['p_value']:.3g} "
                    f"(promote below {decision['limits']['alpha']:g})")
        macro = decision.get("macro_f1_paired")
        if macro:
            figures += (f"; macro-F1 {macro['macro_f1_difference']:+.4f}, {macro['test']}, margin {macro['margin']:g}: "
                        f"p = {macro['p_value']:.3g}")
    elif decision.get("production_run") is None:
        figures += "; no model was in production, so the floors alone decide"
    limits = decision["limits"]
    lines.append(figures + f". Floors: accuracy {limits['min_accuracy']:g}, macro-F1 {limits['min_macro_f1']:g}.")
    if decision["reasons"]:
        lines += [""] + [f"- {markdown_text(reason)}" for reason in decision["reasons"]]
    return lines


def data_section(findings: list[dict]) -> list[str]:
    """The data checks' findings that were accepted on purpose (--data-allow); any other stops the run."""
    if not findings:
        return []
    return ["", "## Data findings accepted on purpose (--data-allow)", ""] + [
        f"- {f['anomaly']}: {markdown_text(f['message'])}" for f in findings]


def markdown_text(text: str) -> str:
    """Text safe inside a markdown table or line: no pipes, no line breaks."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown_report(workload: str, smoke: bool, stages: Mapping[str, StageRun], evaluation: dict,
                    data_findings: list[dict] | None = None, decision: dict | None = None) -> str:
    names = evaluation["labels"]
    models = evaluation["models"]
    computed = [n for n, s in stages.items() if s.state == "computed"]
    lines = [
        f"# {report_title(workload, smoke)}",
        "",
        f"Test set: {evaluation['test_rows']} sentences, {len(names)} classes. Latency: batch 1, "
        f"test sentences at their real lengths, {evaluation['threads']} CPU threads.",
        "",
        "## Models",
        "",
        "| " + " | ".join(MODEL_COLUMNS) + " |",
        "|---|" + "---:|" * (len(MODEL_COLUMNS) - 1),
    ]
    for row in readable_model_rows(model_rows(evaluation)):
        lines.append("| " + " | ".join(row.values()) + " |")
    lines += ["", "![accuracy vs latency and size](accuracy_latency.png)"]
    lines += decision_section(decision or {})
    lines += data_section(data_findings or [])
    lines += shortfall_section(evaluation)
    lines += ["", "## Per-class F1", "", "| class | " + " | ".join(models) + " |",
              "|---|" + "---:|" * len(models)]
    for i, label in enumerate(names):
        lines.append(f"| {markdown_text(label)} | " + " | ".join(f"{m['per_class_f1'][i]:.3f}" for m in models.values()) + " |")
    lines += ["", "![per-class F1](per_class_f1.png)"]
    if FINAL_MODEL in models:
        lines += ["", f"## Confusion matrix of {FINAL_MODEL} (rows: true class, columns: predicted)", "",
                  "| true \\ predicted | " + " | ".join(map(markdown_text, names)) + " |", "|---|" + "---:|" * len(names)]
        for label, row in zip(names, models[FINAL_MODEL]["confusion_matrix"]):
            lines.append(f"| {markdown_text(label)} | " + " | ".join(str(v) for v in row) + " |")
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    total = sum(s.seconds for s in stages.values())
    lines += ["", "## Stages", "",
              f"{len(computed)} of {len(stages)} stages computed, {len(stages) - len(computed)} "
              f"served from the cache; {total:.1f} s in stages.", "",
              "| stage | state | seconds | artifact |", "|---|---|---:|---|"]
    for name, s in stages.items():
        lines.append(f"| {name} | {s.state} | {s.seconds:.1f} | `{s.artifact[:12]}` |")
    lines += ["", "![stage times](stage_times.png)"]
    return "\n".join(lines) + "\n"
