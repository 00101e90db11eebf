"""The teacher with frozen lower layers trained from cached features, against the whole teacher.

    python bench/teacher_freeze.py --data ../shared/data/emotion --threads 1            # step times
    python bench/teacher_freeze.py --data ../shared/data/emotion --threads 1 --accuracy 8 --max-steps 600

Step times: one process, the configurations (`--frozen`, default 0, 6, 8; bf16 autocast
and forced FP32, which stands in for a CPU without native bf16) alternated over
`--rounds` rounds on the same real emotion batches (a seeded subset of `--subset`
training tweets, length-grouped, batch 32, the emotion preset's optimizer), so a slow
minute of a shared VM lands on all of them; each reports its median round in ms a step,
and the time to compute the cached features of that subset (inference mode, 64 texts a
batch), scaled by token count to emotion's train and validation splits.

`--accuracy N`: the fine_tune_teacher stage with frozen layers 0 and N, the emotion
preset's schedule (epochs 3, min_steps 600, max_steps 2000, validations 3) unless
`--max-steps` cuts both to one fixed budget, cached in `--store`; each teacher scored on
test as evaluate scores. Writes bench/results/teacher-freeze-emotion.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.edge import add_store_argument  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402

RESULTS = REPO / "bench" / "results"
OUT = RESULTS / "teacher-freeze-emotion.json"


def say(message: str) -> None:
    print(f"[teacher-freeze] {message}", flush=True)


def prepared(data: str, store_root: str):
    """The emotion preset's configuration, its dataset and MPNet tokens (cached in the store)."""
    from artifacts.stage import Progress
    from artifacts.store import ArtifactStore
    from bench.compare import cached_with_alias
    from flows.pipeline import resolve
    from tasks.formats import open_tokens
    from tasks.stages import fetch, tokenize

    config, _ = resolve("emotion", data, False, None, None)
    store = ArtifactStore(store_root)
    quiet = Progress(lambda message: None, bar=False)
    dataset = cached_with_alias(store, fetch.STAGE, config.data, {}, "teacher-freeze/dataset", quiet)
    tokens_ref = cached_with_alias(store, tokenize.STAGE, config.teacher_tokens, {"dataset": dataset},
                                   "teacher-freeze/tokens", quiet)
    return config, store, tokens_ref, open_tokens(store.open(tokens_ref))


def step_times(config, tokens, frozen_choices: list[int], precisions: list[str], steps: int, rounds: int,
               subset: int) -> dict:
    import numpy as np

    from artifacts.stage import Progress
    from tasks.models.frozen import upper_only
    from tasks.models.loading import load_classifier
    from tasks.stages.teacher_features import hidden_states_of
    from tasks.training.cached import cached_classification_loss
    from tasks.training.loop import classification_loss, train

    quiet = Progress(lambda message: None, bar=False)
    ids, labels = tokens.split("train")
    validation_ids, _ = tokens.split("validation")
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(ids), size=min(subset, len(ids)), replace=False))
    sub_ids, sub_labels = [ids[i] for i in rows], labels[rows]
    all_tokens = sum(len(s) for s in ids) + sum(len(s) for s in validation_ids)
    sub_tokens = sum(len(s) for s in sub_ids)
    pad_id = tokens.spec.pad_id
    base = load_classifier(config.teacher.model, tokens.labels, seed=config.teacher.seed)
    pretrained = {k: v.clone() for k, v in base.state_dict().items()}
    measured: dict[str, list[float]] = {}
    features_s: dict[str, list[float]] = {}
    cached: dict[tuple[int, str], tuple] = {}
    configs = [(f, p) for p in precisions for f in frozen_choices]
    for round_ in range(rounds):
        for frozen, precision in (configs if round_ % 2 == 0 else configs[::-1]):
            name = f"frozen {frozen}, {precision}"
            base.load_state_dict(pretrained)  # every configuration starts from the pretrained weights
            params = config.teacher.model_copy(update={"precision": precision, "device": "cpu", "frozen_layers": frozen,
                                                       "epochs": 1, "min_steps": 0, "validations": 0, "patience": 0})
            if frozen:
                started = time.perf_counter()
                values = hidden_states_of(base, sub_ids, pad_id, frozen, precision, "cpu", quiet, "features")
                features_s.setdefault(name, []).append(time.perf_counter() - started)
                lengths = np.array([len(v) for v in values])
                features = (np.concatenate(values), np.concatenate([[0], np.cumsum(lengths)]))
                cached[(frozen, precision)] = features
                loss = cached_classification_loss(sub_labels, features)
            else:
                loss = classification_loss(sub_labels)
            for label, count in (("warm-up", 2), (name, steps)):
                run = params.model_copy(update={"max_steps": count})
                base.train()
                if frozen:
                    with upper_only(base, frozen) as upper:
                        history = train(upper, sub_ids, loss, run, quiet, label, pad_id)
                else:
                    history = train(base, sub_ids, loss, run, quiet, label, pad_id)
            ms = 1000 * history["train_seconds"] / count
            measured.setdefault(name, []).append(round(ms, 1))
            say(f"round {round_ + 1}/{rounds} {name}: {ms:.0f} ms a step"
                + (f", features of {len(sub_ids)} texts {features_s[name][-1]:.1f} s" if frozen else ""))
    rows_out = []
    for frozen, precision in configs:
        name = f"frozen {frozen}, {precision}"
        row = {"frozen_layers": frozen, "precision": precision, "ms_per_step": statistics.median(measured[name]),
               "rounds_ms": measured[name]}
        if frozen:
            seconds = statistics.median(features_s[name])
            row["features_seconds_subset"] = round(seconds, 2)
            row["features_seconds_emotion"] = round(seconds * all_tokens / sub_tokens, 1)
        rows_out.append(row)
    for row in rows_out:
        full = next(r for r in rows_out if r["precision"] == row["precision"] and r["frozen_layers"] == 0)
        row["speedup_over_frozen_0"] = round(full["ms_per_step"] / row["ms_per_step"], 2)
    return {"steps": steps, "rounds": rounds, "batch_size": config.teacher.batch_size, "subset_rows": len(sub_ids),
            "subset_tokens": sub_tokens, "emotion_train_validation_tokens": all_tokens, "configs": rows_out}


def accuracy(config, store, tokens_ref, tokens, frozen: list[int], max_steps: int | None, precision: str,
             done=lambda partial: None, frozen_lr: float | None = None, partial: dict | None = None) -> dict:
    from artifacts.stage import Progress
    from bench.compare import cached_with_alias
    from flows.config import PipelineConfig
    from tasks.measure.metrics import quality
    from tasks.measure.predictors import torch_predictor
    from tasks.stages import teacher, teacher_features

    test_ids, test_labels = tokens.split("test")
    progress = Progress(lambda message: say(message), bar=False, every_seconds=60)
    partial = partial or {"precision": precision, "max_steps": max_steps, "schedule": config.teacher.model_dump(
        include={"epochs", "learning_rate", "min_steps", "max_steps", "validations", "patience", "batch_size"}),
        "arms": {}}
    arms = partial["arms"]
    # The first candidate first (its code path is the new one), then the whole teacher, then the other candidates.
    for layers in dict.fromkeys([frozen[0], 0, *frozen[1:]]):
        update = {"frozen_layers": layers, "precision": precision, "device": "cpu"}
        if layers and frozen_lr:  # a learning rate of the frozen arms' own (the head and upper layers alone)
            update["learning_rate"] = frozen_lr
        if max_steps:
            update["max_steps"] = max_steps
            update["min_steps"] = min(config.teacher.min_steps, max_steps)
        params = config.teacher.model_copy(update=update)
        arm = f"{layers}" + (f"@lr{params.learning_rate:g}" if params.learning_rate != config.teacher.learning_rate else "")
        if arm in arms:
            continue  # measured by an earlier invocation
        inputs = {"tokens": tokens_ref}
        features_seconds = None
        if layers:
            arm_config = PipelineConfig.model_validate({**config.model_dump(), "teacher": params.model_dump()})
            features_ref = cached_with_alias(store, teacher_features.STAGE, arm_config.teacher_features, inputs,
                                             f"teacher-freeze/features-{layers}-{precision}", progress)
            features_seconds = store.manifest(features_ref)["timings"]["seconds"]
            inputs = {**inputs, "features": features_ref}
        ref = cached_with_alias(store, teacher.STAGE, params, inputs, f"teacher-freeze/teacher-{arm}-{precision}"
                                f"-{max_steps or 'preset'}", progress)
        manifest = store.manifest(ref)
        metrics = manifest["metrics"]
        predict, _ = torch_predictor(store.open(ref))
        scores = quality(predict, test_ids, test_labels, len(tokens.labels), tokens.spec.pad_id)
        arms[arm] = {
            "artifact": ref.digest, "frozen_layers": layers, "learning_rate": params.learning_rate, "steps": metrics["steps"], "steps_run": metrics["steps_run"],
            "best_step": metrics.get("best_step"), "validation_curve": metrics.get("validation_curve"),
            "validation_accuracy": metrics["validation_accuracy"], "validation_macro_f1": metrics["validation_macro_f1"],
            "test_accuracy": round(scores["accuracy"], 5), "test_macro_f1": round(scores["macro_f1"], 5),
            "train_seconds": metrics["train_seconds"], "features_seconds": features_seconds,
            "runtime": manifest.get("runtime")}
        say(f"frozen {layers}: validation {metrics['validation_accuracy']:.4f}, test {scores['accuracy']:.4f}, "
            f"{metrics['train_seconds']:.0f} s")
        done(partial)  # each arm written as it finishes: a run cut short keeps what it measured
    return partial


def markdown(result: dict, where: dict) -> str:
    lines = [machine_line(where), ""]
    speed = result.get("speed")
    if speed:
        lines += [f"MPNet teacher step (batch {speed['batch_size']}, real emotion batches from {speed['subset_rows']} "
                  f"training tweets, length-grouped), median of {speed['rounds']} alternated rounds of "
                  f"{speed['steps']} steps; FP32 forced stands in for a CPU without native bf16. Features: the "
                  f"frozen part run once over the subset, scaled by tokens to emotion's train + validation "
                  f"({speed['emotion_train_validation_tokens']:,} tokens).", "",
                  "| frozen layers | precision | ms a step | rounds (ms) | vs frozen 0 | features, emotion (s) |",
                  "|---:|---|---:|---|---:|---:|"]
        for row in speed["configs"]:
            feats = f"{row['features_seconds_emotion']:.0f}" if row["frozen_layers"] else "-"
            lines.append(f"| {row['frozen_layers']} | {row['precision']} | {row['ms_per_step']:.0f} | "
                         f"{', '.join(f'{v:.0f}' for v in row['rounds_ms'])} | {row['speedup_over_frozen_0']:.2f}x | {feats} |")
        lines.append("")
    acc = result.get("accuracy")
    if acc:
        budget = f"a fixed budget of {acc['max_steps']} steps for both" if acc["max_steps"] else "the emotion preset's schedule"
        lines += [f"Teachers trained by fine_tune_teacher on emotion, {acc['precision']}, {budget} "
                  f"(lr {acc['schedule']['learning_rate']:g}, validations {acc['schedule']['validations']}, best "
                  f"weights kept), scored on test as evaluate scores:", "",
                  "| frozen layers | lr | steps | best step | validation acc | validation macro-F1 | test acc | test macro-F1 "
                  "| train s | features s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for arm in acc["arms"].values():
            feats = f"{arm['features_seconds']:.0f}" if arm["features_seconds"] is not None else "-"
            lines.append(f"| {arm['frozen_layers']} | {arm.get('learning_rate', acc['schedule']['learning_rate']):g} | {arm['steps_run']} | {arm['best_step']} | "
                         f"{100 * arm['validation_accuracy']:.2f}% | {arm['validation_macro_f1']:.4f} | "
                         f"{100 * arm['test_accuracy']:.2f}% | {arm['test_macro_f1']:.4f} | {arm['train_seconds']:.0f} | {feats} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="emotion data folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: leave the other core alone)")
    parser.add_argument("--frozen", default="0,6,8", help="frozen layer counts to time, comma-separated")
    parser.add_argument("--precisions", default="bf16,fp32", help="precisions to time (fp32 forced: a CPU without bf16)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--subset", type=int, default=2048, help="training tweets the step times draw batches from")
    parser.add_argument("--no-speed", action="store_true", help="skip the step times (keep those already in --out)")
    parser.add_argument("--accuracy", metavar="N[,M]", help="also train teachers with 0 and N (M, ...) frozen layers")
    parser.add_argument("--max-steps", type=int, help="--accuracy: one fixed step budget for both arms")
    parser.add_argument("--precision", default="bf16", help="--accuracy: the teachers' precision")
    parser.add_argument("--frozen-lr", type=float, help="--accuracy: the frozen arms' learning rate (default: the preset's)")
    add_store_argument(parser, help="store the tokens and --accuracy teachers are cached in")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    config, store, tokens_ref, tokens = prepared(args.data, args.store)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.pop("machine", None)
    if not args.no_speed:
        result["speed"] = step_times(config, tokens, [int(f) for f in args.frozen.split(",")], args.precisions.split(","),
                                     args.steps, args.rounds, args.subset)
        write(result, args.out)
    if args.accuracy:
        def done(partial: dict) -> None:
            result["accuracy"] = partial
            write(result, args.out)

        # Arms measured before (same precision and budget) are kept beside the new ones.
        before = result.get("accuracy")
        same = before if before and (before["precision"], before["max_steps"]) == (args.precision, args.max_steps) else None
        accuracy(config, store, tokens_ref, tokens, [int(n) for n in args.accuracy.split(",")], args.max_steps,
                 args.precision, done, args.frozen_lr, same)
    return 0


def write(result: dict, out: Path) -> None:
    where = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": where, **result}, indent=2))
    out.with_suffix(".md").write_text(markdown(result, where))
    print(markdown(result, where), flush=True)


if __name__ == "__main__":
    sys.exit(main())
