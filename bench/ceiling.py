"""How high can a student go? Every teacher and student in the store, and the teachers' ensemble.

    python bench/ceiling.py --store .distillery --workload emotion [--int8 ALIAS|DIGEST] [--quick]

A distilled student learns the teacher's function, so the teacher's test accuracy
is, give or take a few tenths, the ceiling of every student below it. This measures
that ceiling on the run's own dataset (from its run record, `<workload>/latest` or
`--int8`): each `fine_tune_teacher` artifact the store holds for tokens of that
dataset (with its hyper-parameters), the mean of their logits (an ensemble, the usual
way to a stronger teacher when no larger pretrained model is at hand), and each
`distil_student` artifact distilled from soft labels of one of those teachers.
Models may read different tokenizers: each runs on its own tokens, and the ensemble
joins their logits by dataset row (every tokens artifact of a dataset holds its rows
in the same order). FP32 PyTorch, validation and test split, accuracy and macro-F1
(tasks/measure/metrics.py), batched as the evaluate stage batches. Prints and writes a
markdown table and JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.store import ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.command import find_run, ref_of  # noqa: E402
from bench.compare import aligned_split  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from tasks.formats import Tokens, model_folder, open_tokens  # noqa: E402
from tasks.measure.metrics import classification_report  # noqa: E402
from tasks.models.loading import load_trained  # noqa: E402
from tasks.training.loop import predict_logits  # noqa: E402

SHOWN_PARAMS = {"fine_tune_teacher": ("model", "learning_rate", "epochs", "seed"),
                "distil_student": ("init", "layers", "loss", "hard_label_weight", "hidden_weight", "epochs", "seed")}
SPLITS = ("validation", "test")
# The batches of tasks/measure.predictions (length-sorted, 64 a batch): the same batches
# give the same logits, so a model's figures here equal those of the evaluate stage.
BATCH_SIZE = 64


def models_for(store: ArtifactStore, dataset: str) -> dict:
    """The teachers fine-tuned on tokens of `dataset` and the students distilled from soft labels of
    one of them (oldest first), which teacher taught each student, and the tokens each model reads."""
    manifests = {digest: store.manifest(digest) for digest in store.digests()}

    def made_by(stage: str) -> list[str]:
        """Sound artifacts of one stage, oldest first."""
        return [digest for _, digest in sorted((m.get("published", ""), d) for d, m in manifests.items()
                                                if m.get("stage") == stage and store.verify(d).ok)]

    upstream = {digest: manifest.get("upstream", {}) for digest, manifest in manifests.items()}
    tokens = {d for d in made_by("tokenize") if upstream[d].get("dataset") == dataset}
    teachers = [d for d in made_by("fine_tune_teacher") if upstream[d].get("tokens") in tokens]
    # Who taught a student is who made its soft labels.
    soft_labels_teacher = {d: upstream[d].get("teacher") for d in made_by("soft_labels")}
    students, taught_by, weights = [], {}, set()
    for digest in made_by("distil_student"):
        teacher = soft_labels_teacher.get(upstream[digest].get("soft_labels"))
        # A rerun under changed code can train the same weights into a new artifact
        # (its training log differs): one row per model, the first one made.
        same_model = manifests[digest]["files"]["model/model.safetensors"]
        if teacher in teachers and upstream[digest].get("tokens") in tokens and same_model not in weights:
            students.append(digest)
            taught_by[digest] = teacher
            weights.add(same_model)
    return {"teachers": teachers, "students": students, "taught_by": taught_by,
            "tokens": {model: upstream[model]["tokens"] for model in teachers + students}}


def model_name(store: ArtifactStore, digest: str, taught_by: dict[str, str]) -> str:
    manifest = store.manifest(digest)
    params = manifest["params"]
    shown = ", ".join(f"{name} {params[name]}" for name in SHOWN_PARAMS[manifest["stage"]] if params.get(name))
    augmented = manifest["upstream"].get("augmented")
    if augmented and store.manifest(augmented)["params"].get("copies"):
        shown += f", {store.manifest(augmented)['params']['copies']} augmented copies"
    role = "teacher" if manifest["stage"] == "fine_tune_teacher" else f"student of {taught_by[digest][:8]}"
    return f"{role} {digest[:8]} ({shown})"


def split_logits(store: ArtifactStore, model: str, tokens: Tokens, splits: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """One model's logits on its own ids of each split's rows."""
    network = load_trained(model_folder(store.open(ref_of(store, model))))
    return {split: predict_logits(network, ids, tokens.spec.pad_id, BATCH_SIZE) for split, ids in splits.items()}


def ceiling(store: ArtifactStore, workload: str, start: str | None, quick: bool) -> dict:
    dataset = find_run(store, workload, start).role("dataset").digest
    found = models_for(store, dataset)
    if not found["teachers"]:
        raise SystemExit(f"no sound fine_tune_teacher artifact in {store.root} was trained on dataset {dataset[:12]}")
    tokens = {digest: open_tokens(store.open(ref_of(store, digest))) for digest in sorted(set(found["tokens"].values()))}
    ids, labels = {}, {}
    for split in SPLITS:  # rows checked to be the same in every tokens artifact, so logits join by row
        ids[split], labels[split] = aligned_split(tokens, split)
        if quick:
            ids[split] = {digest: rows[:300] for digest, rows in ids[split].items()}
            labels[split] = labels[split][:300]
    logits = {}
    for model, tokens_digest in found["tokens"].items():
        print(f"  running {model[:8]} ...", flush=True)
        logits[model] = split_logits(store, model, tokens[tokens_digest], {split: ids[split][tokens_digest] for split in SPLITS})
    variants = {model_name(store, digest, found["taught_by"]): logits[digest] for digest in found["teachers"]}
    if len(found["teachers"]) > 1:
        variants[f"ensemble of the {len(found['teachers'])} teachers (mean logits)"] = {
            split: np.mean([logits[digest][split] for digest in found["teachers"]], axis=0) for split in SPLITS}
    variants.update({model_name(store, digest, found["taught_by"]): logits[digest] for digest in found["students"]})
    classes = len(tokens[found["tokens"][found["teachers"][0]]].labels)
    rows = {name: {split: classification_report(out[split].argmax(1), labels[split], classes) for split in SPLITS}
            for name, out in variants.items()}
    return {"workload": workload, "machine": machine(), "quick": quick, "dataset": dataset, **found,
            "sentences": {split: len(labels[split]) for split in SPLITS}, "models": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['workload']}: FP32 PyTorch, {result['sentences']['validation']} validation and "
             f"{result['sentences']['test']} test sentences, each model on its own tokens of the same rows. "
             f"{machine_line(result['machine'])}.", "",
             "| model | validation accuracy | validation macro-F1 | test accuracy | test macro-F1 |",
             "|---|---:|---:|---:|---:|"]
    for name, row in result["models"].items():
        lines.append(f"| {name} | {row['validation']['accuracy']:.2%} | {row['validation']['macro_f1']:.4f} | "
                     f"{row['test']['accuracy']:.2%} | {row['test']['macro_f1']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = command.parser(__doc__, "ceiling", "the run whose dataset the models must be trained on",
                          "the first 300 sentences of each split").parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = ceiling(ArtifactStore(args.store), args.workload, args.int8, args.quick)
    command.write_results(result, markdown(result), "ceiling", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
