"""Generality: how close the INT8 student comes to its teacher on each data set run with the defaults.

    python bench/generality.py --store .distillery --name emotion --name trec --name reuters-r8

For every workload name, its latest run (the run record `<name>/latest`): the data set's
size and classes, the teacher's and the INT8 student's test accuracy and macro-F1 (as
`evaluate` measured them), the per-class gap on test and the validation shortfall that
run reported (both by tasks/measure/metrics.py `shortfall`, the same rule), and each stage's
time as recorded in its artifact's manifest (the time it took when it was computed).
Nothing is recomputed here. Writes bench/results/generality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.edge import add_store_argument  # noqa: E402
from artifacts.runs import latest_run  # noqa: E402
from artifacts.store import ArtifactStore  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from tasks.formats import read_evaluation  # noqa: E402
from tasks.measure.metrics import shortfall  # noqa: E402

RESULTS = REPO / "bench" / "results"


def row(store: ArtifactStore, name: str) -> dict:
    record = latest_run(store, name)
    evaluation = read_evaluation(store.open(record.role("evaluation")))
    dataset = store.manifest(record.role("dataset"))["metrics"]
    teacher, int8 = evaluation["models"]["teacher"], evaluation["models"]["student_int8"]
    on_test = shortfall(teacher, int8, evaluation["labels"], accuracy_points=1.0, class_f1=0.10)
    counts = dataset["label_counts"]["train"] if isinstance(dataset.get("label_counts"), dict) and "train" in dataset["label_counts"] else None
    return {
        "name": name, "run": record.role("evaluation").digest[:12], "rows": dataset["rows"], "classes": len(evaluation["labels"]),
        "smallest_class_share": round(min(counts.values()) / sum(counts.values()), 4) if isinstance(counts, dict) else None,
        "teacher": {k: teacher[k] for k in ("accuracy", "macro_f1")}, "student_int8": {k: int8[k] for k in ("accuracy", "macro_f1")},
        "test_gap": {k: on_test[k] for k in ("accuracy_gap_points", "macro_f1_gap", "worst_class", "flagged", "reasons")},
        "validation_shortfall": {**{k: evaluation["shortfall"][k] for k in ("accuracy_gap_points", "macro_f1_gap", "worst_class", "flagged")},
                                 "teacher_accuracy": evaluation["shortfall"]["teacher"]["accuracy"],
                                 "student_int8_accuracy": evaluation["shortfall"]["student_int8"]["accuracy"]}
        if "shortfall" in evaluation else None,
        "speedup_batch1": round(teacher["latency_p50_ms"] / int8["latency_p50_ms"], 1),
        "stage_seconds": {step: store.manifest(digest).get("timings", {}).get("seconds") for step, digest in record.steps.items()},
        "made_on": {step: store.manifest(digest).get("runtime") for step, digest in record.steps.items()
                    if step in ("fine_tune_teacher", "distil_student")},
    }


def markdown(result: dict, title: str = "Generality: the INT8 student against its teacher, every data set with the defaults") -> str:
    lines = [f"# {title}", "",
             machine_line(result["machine"]) + " (the machine this table was written on; each run's own threads are in the JSON)", "",
             "| run | train rows | classes | smallest class | validation: teacher / INT8 acc | test: teacher acc / F1 | test: INT8 acc / F1 | gap (points / F1) | worst class on test (teacher -> INT8 F1) | within targets | batch-1 speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in result["rows"]:
        gap, worst = r["test_gap"], r["test_gap"]["worst_class"]
        share = f"{r['smallest_class_share']:.1%}" if r["smallest_class_share"] is not None else "?"
        within = "yes" if abs(gap["macro_f1_gap"]) <= 0.02 and not gap["flagged"] else "no"
        val = r["validation_shortfall"]
        on_validation = (f"{val['teacher_accuracy']:.2%} / {val['student_int8_accuracy']:.2%}"
                         if val and "teacher_accuracy" in val else "")
        lines.append(f"| {r['name']} | {r['rows'].get('train')} | {r['classes']} | {share} | {on_validation} | "
                     f"{r['teacher']['accuracy']:.2%} / {r['teacher']['macro_f1']:.3f} | "
                     f"{r['student_int8']['accuracy']:.2%} / {r['student_int8']['macro_f1']:.3f} | "
                     f"{gap['accuracy_gap_points']:.2f} / {gap['macro_f1_gap']:.3f} | {worst['label']} "
                     f"({worst['teacher_f1']:.3f} -> {worst['student_f1']:.3f}) | {within} | {r['speedup_batch1']}x |")
    lines += ["", "Targets (issue 28): INT8 within 1.0 point and 0.02 macro-F1 of its teacher on test, no class F1 more than "
              "0.10 below. Stage times (seconds, as computed):", ""]
    steps = list(dict.fromkeys(step for r in result["rows"] for step in r["stage_seconds"]))
    lines += ["| data set | " + " | ".join(steps) + " |", "|---|" + "---:|" * len(steps)]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['stage_seconds'].get(s) or 0:.0f}" for s in steps) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_argument(parser)
    parser.add_argument("--name", action="append", required=True, help="a workload name (repeat for each)")
    parser.add_argument("--out", type=Path, default=RESULTS / "generality.json")
    parser.add_argument("--title", default=None, help="the markdown table's title")
    args = parser.parse_args(argv)
    store = ArtifactStore(args.store)
    result = {"machine": machine(), "rows": [row(store, name) for name in args.name]}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, args.title) if args.title else markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
