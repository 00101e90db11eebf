"""Teacher fine-tuning throughput in FP32 and bf16 autocast, measured side by side.

    python bench/precision.py --data ../shared/data/emotion            # MPNet teacher, 40 steps a side
    python bench/precision.py --data ../shared/data/emotion --model minilm --steps 20
    python bench/precision.py --data ../shared/data/emotion --model minilm --accuracy --store .distillery

Same model, same real emotion batches (length-grouped, batch 32), the two precisions
alternated over `--rounds` rounds so a slow minute of this shared VM lands on both;
each side reports its median round. It also notes what `--teacher-precision auto`
resolves to on this machine and which CPU flags decided it. Writes JSON and a
markdown table to bench/results/precision-<model>.{json,md}.

`--accuracy` measures the other half of the trade: the `fine_tune_teacher` stage run
to the preset's full schedule once in FP32 and once in bf16 (cached in `--store`, so a
rerun costs nothing), each scored on the test split the way `evaluate` scores
(tasks/measure/metrics.py). Writes bench/results/precision-accuracy-<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.edge import add_store_argument  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402

RESULTS = REPO / "bench" / "results"


def teacher_tokens(data: str, model_name: str, workdir: Path):
    """The emotion preset's configuration with this teacher, and the teacher's tokens of `data`, made in a scratch store."""
    from artifacts.stage import Progress, run_stage
    from artifacts.store import ArtifactStore
    from flows.pipeline import resolve
    from tasks.stages import fetch, tokenize
    from tasks.formats import open_tokens

    config, _ = resolve("emotion", data, False, {"teacher": {"model": model_name}}, None)
    store = ArtifactStore(str(workdir / "store"))
    quiet = Progress(lambda message: None, bar=False)
    dataset = run_stage(fetch.STAGE, config.data, {}, store, quiet)
    return config, open_tokens(store.open(run_stage(tokenize.STAGE, config.teacher_tokens, {"dataset": dataset}, store, quiet)))


def throughput(data: str, model_name: str, steps: int, rounds: int, workdir: Path) -> dict:
    from artifacts.stage import Progress
    from tasks.models.loading import load_classifier
    from tasks.training.device import NATIVE_BF16_FLAGS, cpu_flags, resolve_precision
    from tasks.training.loop import classification_loss, train

    config, tokens = teacher_tokens(data, model_name, workdir)
    quiet = Progress(lambda message: None, bar=False)
    ids, labels = tokens.split("train")
    epochs = steps * config.teacher.batch_size / len(ids)
    measured: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for round_ in range(rounds):
        for precision in (("fp32", "bf16") if round_ % 2 == 0 else ("bf16", "fp32")):
            params = config.teacher.model_copy(update={"epochs": epochs, "precision": precision, "device": "cpu"})
            model = load_classifier(model_name, tokens.labels, seed=params.seed)
            warm = params.model_copy(update={"epochs": 3 * params.batch_size / len(ids)})
            train(model, ids, classification_loss(labels), warm, quiet, "warm-up", tokens.spec.pad_id)
            print(f"[precision] round {round_ + 1}/{rounds} {precision}: {steps} steps ...", flush=True)
            history = train(model, ids, classification_loss(labels), params, quiet, precision, tokens.spec.pad_id)
            measured[precision].append(history["examples_per_second"])
    flags = sorted(cpu_flags() & set(NATIVE_BF16_FLAGS))
    fp32, bf16 = (statistics.median(measured[p]) for p in ("fp32", "bf16"))
    return {"model": model_name, "steps": steps, "batch_size": config.teacher.batch_size, "rounds": measured,
            "fp32_examples_per_second": fp32, "bf16_examples_per_second": bf16, "bf16_over_fp32": round(bf16 / fp32, 3),
            "native_bf16_flags": flags, "auto_resolves_to": resolve_precision("auto", "cpu", "--teacher-precision")}


def accuracy_pair(data: str, model_name: str, store_root: str, smoke: bool = False) -> dict:
    from artifacts.stage import Progress
    from artifacts.store import ArtifactStore
    from bench.compare import cached_with_alias
    from flows.pipeline import resolve
    from tasks.stages import fetch, teacher, tokenize
    from tasks.formats import open_tokens
    from tasks.measure.metrics import quality
    from tasks.measure.predictors import torch_predictor

    config, _ = resolve("emotion", data, smoke, {"teacher": {"model": model_name}}, None)
    store = ArtifactStore(store_root)
    say = Progress(lambda message: print(f"[precision] {message}", flush=True), bar=False)
    # Cached like the pipeline's stages, so a rerun of the pair only scores the two teachers.
    dataset = cached_with_alias(store, fetch.STAGE, config.data, {}, "precision/dataset", say)
    tokens_ref = cached_with_alias(store, tokenize.STAGE, config.teacher_tokens, {"dataset": dataset}, f"precision/{model_name}/tokens", say)
    tokens = open_tokens(store.open(tokens_ref))
    test_ids, test_labels = tokens.split("test")
    sides = {}
    for precision in ("fp32", "bf16"):
        params = config.teacher.model_copy(update={"precision": precision, "device": "cpu"})
        ref = cached_with_alias(store, teacher.STAGE, params, {"tokens": tokens_ref}, f"precision/{model_name}/{precision}", say)
        manifest = store.manifest(ref)
        predict, _ = torch_predictor(store.open(ref))
        scores = quality(predict, test_ids, test_labels, len(tokens.labels), tokens.spec.pad_id)
        sides[precision] = {"artifact": ref.digest, "test_accuracy": scores["accuracy"], "test_macro_f1": scores["macro_f1"],
                            "validation_accuracy": manifest["metrics"]["validation_accuracy"],
                            "examples_per_second": manifest["metrics"]["examples_per_second"],
                            "train_seconds": manifest["metrics"]["train_seconds"]}
    gap = 100 * (sides["bf16"]["test_accuracy"] - sides["fp32"]["test_accuracy"])
    return {"model": model_name, "epochs": config.teacher.epochs, "learning_rate": config.teacher.learning_rate,
            "sides": sides, "bf16_minus_fp32_test_points": round(gap, 2)}


def accuracy_markdown(result: dict, where: dict) -> str:
    lines = [machine_line(where), "",
             f"Teacher {result['model']} fine-tuned by the fine_tune_teacher stage, {result['epochs']:g} epochs, "
             f"lr {result['learning_rate']:g}, once per precision; test split scored as evaluate scores:", "",
             "| precision | test accuracy | test macro-F1 | validation accuracy | examples/s | train s |",
             "|---|---:|---:|---:|---:|---:|"]
    for precision, side in result["sides"].items():
        lines.append(f"| {precision} | {100 * side['test_accuracy']:.2f}% | {side['test_macro_f1']:.4f} | "
                     f"{100 * side['validation_accuracy']:.2f}% | {side['examples_per_second']:.1f} | {side['train_seconds']:.0f} |")
    lines += ["", f"bf16 - FP32 test accuracy: {result['bf16_minus_fp32_test_points']:+.2f} points.", ""]
    return "\n".join(lines)


def markdown(result: dict, where: dict) -> str:
    return "\n".join([
        machine_line(where), "",
        f"Teacher fine-tuning, {result['model']}, batch {result['batch_size']}, {result['steps']} steps per round, "
        f"median of {len(result['rounds']['fp32'])} alternated rounds:", "",
        "| precision | examples/s | rounds |", "|---|---:|---|",
        f"| FP32 | {result['fp32_examples_per_second']:.1f} | {', '.join(map(str, result['rounds']['fp32']))} |",
        f"| bf16 autocast | {result['bf16_examples_per_second']:.1f} | {', '.join(map(str, result['rounds']['bf16']))} |", "",
        f"bf16 / FP32: {result['bf16_over_fp32']:.2f}x. Native bf16 flags on this CPU: "
        f"{', '.join(result['native_bf16_flags']) or 'none'}; `--teacher-precision auto` resolves to "
        f"{result['auto_resolves_to']}.", ""])


def write_result(result: dict, out: Path, render) -> None:
    """The result as JSON and markdown side by side, with the machine it ran on."""
    where = machine()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": where, **result}, indent=2))
    out.with_suffix(".md").write_text(render(result, where))
    print(render(result, where))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="emotion data folder")
    parser.add_argument("--model", default="mpnet", help="teacher model source")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accuracy", action="store_true", help="train the full schedule in each precision and score test accuracy")
    add_store_argument(parser, help="store the --accuracy teachers are cached in")
    parser.add_argument("--smoke", action="store_true", help="--accuracy on the smoke preset's slice and schedule (tests)")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/precision-<model>.json)")
    args = parser.parse_args()
    if args.accuracy:
        write_result(accuracy_pair(args.data, args.model, args.store, args.smoke),
                     args.out or RESULTS / f"precision-accuracy-{args.model}.json", accuracy_markdown)
        return 0
    with tempfile.TemporaryDirectory(prefix="precision-") as scratch:
        result = throughput(args.data, args.model, args.steps, args.rounds, Path(scratch))
    write_result(result, args.out or RESULTS / f"precision-{args.model}.json", markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
