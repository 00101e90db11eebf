"""The student recipe, chosen by measurement: variants of the workload run side by side.

    python bench/recipe.py --workload emotion --data ../shared/data/emotion
    python bench/recipe.py --workload emotion --data ../shared/data/emotion --only kl-hard,aug2
    python bench/recipe.py --workload sst2 --data ../shared/data/sst2
    python bench/recipe.py --only aug2,seed2 --extra "--teacher-precision fp32" --results recipe-emotion-fp32-teacher

Each variant is the workload's CLI with a few flags changed, run on the same store,
so the teacher, its soft labels and everything else a variant does not change come
from the cache: a variant costs its own student (and, for augmentation, the soft
labels of its extra texts). A rerun of this script recomputes nothing it measured.

Choices are made on **validation** (the FP32 student's accuracy after distillation,
as `distil_student` records it; for the INT8 method, the INT8 model's, as `quantize`
and `qat_student` record it); test figures are reported, never used to pick.
Writes bench/results/recipe-<workload>.{json,md} (or --results NAME).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.runs import read_run  # noqa: E402
from artifacts.store import ArtifactStore  # noqa: E402
from bench.command import ref_of  # noqa: E402
from artifacts.edge import add_store_argument  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402

RESULTS = REPO / "bench" / "results"

# workload -> name -> (flags beyond the preset, what it tests). Flags are the workload CLI's own.
Variants = dict[str, tuple[list[str], str]]
AUG2 = ["--augment-copies", "2", "--student-epochs", "1.5"]  # the emotion preset's student since this comparison
AUG4 = ["--augment-copies", "4", "--student-epochs", "1"]
EMOTION: Variants = {
    # The emotion preset before this comparison; flags spelled out, so a rerun measures the same run.
    "base": (["--augment-copies", "0", "--student-epochs", "3"], "logits MSE, 3 layers [0,2,4], no augmentation, 3 epochs"),
    "kl-hard": (["--augment-copies", "0", "--student-epochs", "3", "--student-loss", "kl", "--student-temperature", "2", "--student-hard-label-weight", "0.5"],
                "KL at T=2 mixed half and half with cross-entropy on the true labels"),
    "aug2": (AUG2,
             "2 augmented variants per tweet, teacher-labelled; 1.5 epochs over the 3x set"),
    "layers2": (["--augment-copies", "0", "--student-epochs", "3", "--student-layers", "0,5"], "2 layers [0,5] instead of 3, no augmentation"),
    "seed2": ([*AUG2, "--student-seed", "7"], "aug2 (the emotion preset since) with a second student seed"),
    # Twice the variants over about the same number of student steps (5x the tweets, 1 epoch).
    "aug4": (AUG4, "4 augmented variants per tweet, teacher-labelled; 1 epoch over the 5x set"),
    "aug4-seed2": ([*AUG4, "--student-seed", "7"], "aug4 with a second student seed"),
    # The INT8 method, on the chosen student: compared on INT8 validation accuracy.
    "qat": ([*AUG2, "--quantize-method", "qat"],
            "aug2's student, INT8 by quantization-aware fine-tuning (1 epoch, true labels) instead of post-training"),
    "ptq-static": ([*AUG2, "--quantize-approach", "static"],
                   "aug2's student, INT8 by static post-training quantization (256 calibration sentences) instead of dynamic"),
}
SENT6 = ["--augment-copies", "6", "--augment-source", "sentences", "--augment-ngram-probability", "0", "--student-epochs", "1.5"]
HELD_OUT = ["--data-validation-holdout", "sentences"]
SST2: Variants = {
    # The SST-2 preset before this comparison.
    "base": (["--augment-copies", "0", "--student-epochs", "2"], "logits MSE, 3 layers [0,2,4], no augmentation, 2 epochs"),
    "aug2": (["--augment-copies", "2", "--student-epochs", "1"],
             "2 augmented variants per phrase, teacher-labelled; 1 epoch over the 3x set (the SST-2 preset since)"),
    # Dev is whole sentences, train mostly their sub-phrases: variants of the full sentences only,
    # uncut, so the student sees sentence-length text labelled by the teacher.
    "sent6": (SENT6,
              "6 uncut variants of each full training sentence (none of the phrases), teacher-labelled; 1.5 epochs"),
    # The same two on validation held out by sentence (tasks/data/phrases.py): no text shared with
    # train, and sentence-length like dev, so it can rank sentence-level skill. A new data set,
    # so a new teacher: these rows compare with each other, not with the ones above.
    "held-aug2": ([*HELD_OUT, "--augment-copies", "2", "--student-epochs", "1"], "aug2, validation held out by sentence"),
    "held-sent6": ([*HELD_OUT, *SENT6], "sent6, validation held out by sentence"),
    # sent6 where half the variants swap one constituent for another sentence's: new
    # sentence-level compositions for the teacher to label (tasks/stages/augment.py). Same copies and
    # epochs as held-sent6, so the two differ in the substitution alone.
    "held-sub6": ([*HELD_OUT, *SENT6, "--augment-substitute-probability", "0.5"],
                  "sent6 with half the variants swapping one constituent for another sentence's, validation held out by sentence"),
}
VARIANTS: dict[str, Variants] = {"emotion": EMOTION, "sst2": SST2}


def run_variant(workload: str, data: str, store: str, flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cmd = [sys.executable, str(REPO / "flows" / f"{workload}.py"), "--data", data, "--store", store,
               "--summary", str(summary), *flags]
        print("[recipe] " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
        return json.loads(summary.read_text())


def row(name: str, flags: list[str], what: str, summary: dict, store: ArtifactStore) -> dict:
    record = read_run(store, ref_of(store, summary["run"]))
    student = store.manifest(record.roles["student"])
    int8 = store.manifest(record.roles["student_int8"])
    metrics = summary["metrics"]
    return {
        "variant": name, "flags": flags, "what": what,
        "validation_accuracy_fp32_student": student["metrics"]["validation_accuracy"],
        "validation_accuracy_int8": int8["metrics"]["validation_accuracy_int8"],
        "int8_method": int8["stage"],
        "test": {model: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "latency_p50_ms": m["latency_p50_ms"]}
                 for model, m in metrics.items()},
        "student_train_seconds": student["metrics"]["train_seconds"],
        "steps": {step: s["state"] for step, s in summary["stages"].items()},
        "run": summary["run"],
    }


def table(rows: list[dict], workload: str) -> str:
    lines = [f"# Student recipe on {workload} ({machine_line(machine())})", "",
             "Chosen on validation (FP32 student); test reported. Teacher: the run's fine-tuned teacher, cached.", "",
             "| variant | what | val acc (FP32 student) | val acc INT8 | test acc INT8 | test macro-F1 INT8 | test acc FP32 student | teacher test acc |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["test"]
        lines.append(f"| {r['variant']} | {r['what']} | {100 * r['validation_accuracy_fp32_student']:.2f}% | "
                     f"{100 * r['validation_accuracy_int8']:.2f}% | "
                     f"{100 * t['student_int8']['accuracy']:.2f}% | {t['student_int8']['macro_f1']:.3f} | "
                     f"{100 * t['student']['accuracy']:.2f}% | {100 * t['teacher']['accuracy']:.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="emotion", choices=["emotion", "sst2"])
    parser.add_argument("--data", required=True)
    add_store_argument(parser)
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    parser.add_argument("--extra", default="", help="flags added to every variant (e.g. a chosen recipe), space-separated")
    parser.add_argument("--results", help="result file name, without suffix (default: recipe-<workload>); required with --extra")
    args = parser.parse_args()
    if args.extra and not args.results:
        raise SystemExit("--extra changes every variant: give --results NAME too, so its rows do not replace "
                         f"those in bench/results/recipe-{args.workload}.json, which were measured without it")
    variants = VARIANTS[args.workload]
    names = args.only.split(",") if args.only else list(variants)
    unknown = set(names) - set(variants)
    if unknown:
        raise SystemExit(f"unknown {args.workload} variants {sorted(unknown)}: choose from {', '.join(variants)}")
    store = ArtifactStore(args.store)
    out = RESULTS / f"{args.results or f'recipe-{args.workload}'}.json"
    previous = {r["variant"]: r for r in json.loads(out.read_text())["rows"]} if out.exists() else {}
    for name in names:
        flags = variants[name][0] + args.extra.split()
        summary = run_variant(args.workload, args.data, args.store, flags)
        previous[name] = row(name, flags, variants[name][1], summary, store)
        rows = [{**previous[n], "what": variants[n][1]} for n in variants if n in previous]  # descriptions as they read now
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine(), "workload": args.workload, "rows": rows}, indent=2))
        out.with_suffix(".md").write_text(table(rows, args.workload))
        print(table(rows, args.workload), flush=True)


if __name__ == "__main__":
    main()
