"""Teacher fine-tuning throughput in FP32 and bf16 autocast, measured side by side.

    python bench/precision.py --data ../shared/data/emotion            # MPNet teacher, 40 steps a side
    python bench/precision.py --data ../shared/data/emotion --model minilm --steps 20

Same model, same real emotion batches (length-grouped, batch 32), the two precisions
alternated over `--rounds` rounds so a slow minute of this shared VM lands on both;
each side reports its median round. It also notes what `--teacher-precision auto`
resolves to on this machine and which CPU flags decided it. Writes JSON and a
markdown table to bench/results/precision-<model>.{json,md}.
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

from bench.machine import machine, machine_line  # noqa: E402

RESULTS = REPO / "bench" / "results"


def throughput(data: str, model_name: str, steps: int, rounds: int, workdir: Path) -> dict:
    from artifacts.stage import Progress, run_stage
    from artifacts.store import ArtifactStore
    from flows.pipeline import FETCH_DATASET, TOKENIZE, resolve
    from tasks.formats import open_tokens
    from tasks.models import load_classifier
    from tasks.precision import NATIVE_BF16_FLAGS, cpu_flags, resolve_precision
    from tasks.training import classification_loss, train

    config, _ = resolve("emotion", data, False, {"teacher": {"model": model_name}}, None)
    store = ArtifactStore(str(workdir / "store"))
    quiet = Progress(lambda message: None, bar=False)
    dataset = run_stage(FETCH_DATASET, config.data, {}, store, quiet)
    tokens = open_tokens(store.open(run_stage(TOKENIZE, config.teacher_tokens, {"dataset": dataset}, store, quiet)))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="emotion data folder")
    parser.add_argument("--model", default="mpnet", help="teacher model source")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/precision-<model>.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="precision-") as scratch:
        result = throughput(args.data, args.model, args.steps, args.rounds, Path(scratch))
    where = machine()
    out = args.out or RESULTS / f"precision-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": where, **result}, indent=2))
    out.with_suffix(".md").write_text(markdown(result, where))
    print(markdown(result, where))
    return 0


if __name__ == "__main__":
    sys.exit(main())
