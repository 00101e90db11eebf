"""How high can a student go? Every teacher and student in the store, and the teachers' ensemble.

    python bench/ceiling.py --store .distillery --workload emotion [--int8 ALIAS|DIGEST] [--quick]

A distilled student learns the teacher's function, so the teacher's test accuracy
is, give or take a few tenths, the ceiling of every student below it. This measures
that ceiling on the run's own tokens: each `fine_tune_teacher` artifact the store
holds for them (with its hyper-parameters), the mean of their logits (an ensemble,
the usual way to a stronger teacher when no larger pretrained model is at hand),
and each `distil_student` artifact made from one of those teachers. FP32 PyTorch,
validation and test split, accuracy and macro-F1, batched as everywhere else
(tasks/timing.predictions). Prints and writes a markdown table and JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.store import ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from bench.compare import int8_student, quality, ref_of  # noqa: E402
from tasks.evaluate import torch_predictor  # noqa: E402
from tasks.tokenize import read_tokens  # noqa: E402

SHOWN_PARAMS = {"fine_tune_teacher": ("learning_rate", "epochs", "seed"),
                "distil_student": ("layers", "loss", "hard_label_weight", "hidden_weight", "epochs", "seed")}


def models_on(store: ArtifactStore, tokens: str) -> dict[str, list[str]]:
    """The teachers trained on `tokens`, and the students distilled from one of them, oldest first."""
    found: dict[str, list[tuple[str, str]]] = {"fine_tune_teacher": [], "distil_student": []}
    manifests = {digest: store.manifest(digest) for digest in store.digests()}
    for digest, manifest in manifests.items():
        if manifest.get("stage") in found and manifest["upstream"].get("tokens") == tokens and store.verify(digest).ok:
            found[manifest["stage"]].append((manifest.get("published", ""), digest))
    teachers = [digest for _, digest in sorted(found["fine_tune_teacher"])]
    students, weights = [], set()
    for _, digest in sorted(found["distil_student"]):
        # A rerun under changed code can train the same weights into a new artifact
        # (its training log differs): one row per model, the first one made.
        same_model = manifests[digest]["files"]["model/model.safetensors"]
        if manifests[digest]["upstream"]["teacher"] in teachers and same_model not in weights:
            students.append(digest)
            weights.add(same_model)
    return {"teachers": teachers, "students": students}


def model_name(store: ArtifactStore, digest: str) -> str:
    manifest = store.manifest(digest)
    params = manifest["params"]
    shown = ", ".join(f"{name} {params[name]}" for name in SHOWN_PARAMS[manifest["stage"]] if params.get(name))
    augmented = manifest["upstream"].get("augmented")
    if augmented and store.manifest(augmented)["params"].get("copies"):
        shown += f", {store.manifest(augmented)['params']['copies']} augmented copies"
    role = "teacher" if manifest["stage"] == "fine_tune_teacher" else f"student of {manifest['upstream']['teacher'][:8]}"
    return f"{role} {digest[:8]} ({shown})"


def ceiling(store: ArtifactStore, workload: str, start: str | None, quick: bool) -> dict:
    tokens = store.manifest(int8_student(store, workload, start))["upstream"]["tokens"]
    folder = store.open(ref_of(store, tokens))
    classes = len(json.loads((folder / "labels.json").read_text())["names"])
    splits = {}
    for split in ("validation", "test"):
        ids, labels = read_tokens(folder, split)
        splits[split] = (ids[:300], labels[:300]) if quick else (ids, labels)
    found = models_on(store, tokens)
    predictors = {digest: torch_predictor(store.open(ref_of(store, digest)))[0] for digest in found["teachers"] + found["students"]}

    def ensemble(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.mean([predictors[digest](ids, mask) for digest in found["teachers"]], axis=0)

    variants = {model_name(store, digest): predictors[digest] for digest in found["teachers"]}
    if len(found["teachers"]) > 1:
        variants[f"ensemble of the {len(found['teachers'])} teachers (mean logits)"] = ensemble
    variants.update({model_name(store, digest): predictors[digest] for digest in found["students"]})
    rows = {}
    for name, predict in variants.items():
        print(f"  measuring {name} ...", flush=True)
        rows[name] = {split: quality(predict, ids, labels, classes) for split, (ids, labels) in splits.items()}
    return {"workload": workload, "machine": machine(), "quick": quick, "tokens": tokens, **found,
            "sentences": {split: len(ids) for split, (ids, _) in splits.items()}, "models": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['workload']}: FP32 PyTorch, {result['sentences']['validation']} validation and "
             f"{result['sentences']['test']} test sentences. {machine_line(result['machine'])}.", "",
             "| model | validation accuracy | validation macro-F1 | test accuracy | test macro-F1 |",
             "|---|---:|---:|---:|---:|"]
    for name, row in result["models"].items():
        lines.append(f"| {name} | {row['validation']['accuracy']:.2%} | {row['validation']['macro_f1']:.4f} | "
                     f"{row['test']['accuracy']:.2%} | {row['test']['macro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = command.parser(__doc__, "ceiling", "a run's INT8 student, whose tokens the models must share",
                          "the first 300 sentences of each split").parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = ceiling(ArtifactStore(args.store), args.workload, args.int8, args.quick)
    command.write_results(result, markdown(result), "ceiling", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
