"""Teacher fine-tuning throughput: torch's default AdamW, fused AdamW, and a plain loop.

    python bench/optimizer.py --data ../shared/data/emotion              # MPNet teacher, 30 steps a side
    python bench/optimizer.py --data ../shared/data/emotion --model minilm --steps 20

Three sides on the same model, the same real emotion batches (the teacher's batch plan,
length-grouped, batch 32) and the precision `auto` resolves to here:
- `train, default AdamW`: tasks/training/loop.py's loop with `fused_optimizer=False` (before);
- `train, fused AdamW`: the same loop as the pipeline now runs it (after);
- `plain loop, fused AdamW`: forward, backward, clip, step, zero_grad and nothing else
  (no schedule, progress or checkpoint checks): what the training loop's own overhead
  is measured against (target: the pipeline's loop at >= 90% of it).
Each round runs every side once, in a rotated order, so a slow minute of this shared VM
lands on all; each side reports its median round. Writes bench/results/optimizer-<model>.{json,md}.
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

from bench.machine import machine, machine_line  # noqa: E402

RESULTS = REPO / "bench" / "results"
SIDES = ("train, default AdamW", "train, fused AdamW", "plain loop, fused AdamW")


def plain_loop(model, ids, labels, batches, params, pad_id) -> float:
    """Examples per second of the textbook loop over `batches`."""
    import torch
    import torch.nn.functional as F

    from tasks.data.batching import pad
    from tasks.training.device import autocast
    from tasks.training.loop import _optimizer

    device, precision = params.runs_on()
    model.to(device).train()
    optimizer = _optimizer(model, params)
    targets = torch.as_tensor(labels)
    started = time.time()
    for batch in batches:
        input_ids, mask = pad(ids, batch, pad_id)
        with autocast(precision, device):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss = F.cross_entropy(logits.float(), targets[batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return sum(len(b) for b in batches) / (time.time() - started)


def throughput(data: str, model_name: str, steps: int, rounds: int, workdir: Path) -> dict:
    from artifacts.stage import Progress
    from bench.precision import teacher_tokens
    from tasks.models.loading import load_classifier
    from tasks.training.loop import batch_plan, classification_loss, train

    config, tokens = teacher_tokens(data, model_name, workdir)
    quiet = Progress(lambda message: None, bar=False)
    ids, labels = tokens.split("train")
    base = config.teacher.model_copy(update={"epochs": 1, "max_steps": steps, "device": "cpu"})
    batches = batch_plan([len(s) for s in ids], base)  # the batches train() will see: the same for every side
    warm = base.model_copy(update={"max_steps": 3})
    measured: dict[str, list[float]] = {side: [] for side in SIDES}
    optimizers: dict[str, str] = {}
    for round_ in range(rounds):
        order = SIDES[round_ % 3:] + SIDES[: round_ % 3]
        for side in order:
            fused = "fused" in side
            params = base.model_copy(update={"fused_optimizer": fused})
            model = load_classifier(model_name, tokens.labels, seed=params.seed)
            train(model, ids, classification_loss(labels), warm.model_copy(update={"fused_optimizer": fused}), quiet,
                  "warm-up", tokens.spec.pad_id)
            print(f"[optimizer] round {round_ + 1}/{rounds} {side}: {steps} steps ...", flush=True)
            if side.startswith("plain"):
                measured[side].append(round(plain_loop(model, ids, labels, batches, params, tokens.spec.pad_id), 2))
            else:
                history = train(model, ids, classification_loss(labels), params, quiet, side, tokens.spec.pad_id)
                measured[side].append(history["examples_per_second"])
                optimizers[side] = history["optimizer"]
    median = {side: statistics.median(values) for side, values in measured.items()}
    return {"model": model_name, "steps": steps, "batch_size": base.batch_size, "precision": base.runs_on()[1],
            "rounds": measured, "examples_per_second": median, "optimizer_that_ran": optimizers,
            "fused_over_default": round(median[SIDES[1]] / median[SIDES[0]], 3),
            "train_over_plain_loop": round(median[SIDES[1]] / median[SIDES[2]], 3)}


def markdown(result: dict) -> str:
    lines = [f"# Teacher training throughput: {result['model']}, default against fused AdamW", "",
             machine_line(result["machine"]), "",
             f"{result['steps']} steps of batch {result['batch_size']} (real emotion batches, the same for every side), "
             f"{result['precision']}, median of {len(next(iter(result['rounds'].values())))} rounds.", "",
             "| side | examples/s (median) | rounds |", "|---|---:|---|"]
    for side in SIDES:
        lines.append(f"| {side} | {result['examples_per_second'][side]:.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in result['rounds'][side])} |")
    lines += ["", f"Fused over default: {result['fused_over_default']:.2f}x. The pipeline's loop over the plain loop: "
              f"{result['train_over_plain_loop']:.0%}. Optimizer read back from the loop: {result['optimizer_that_ran']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the emotion data folder (or Hub id)")
    parser.add_argument("--model", default="mpnet", help="teacher model: mpnet (the preset's), minilm, tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/results/optimizer-<model>.json)")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = {"machine": machine(), **throughput(args.data, args.model, args.steps, args.rounds, Path(tmp))}
    out = args.out or RESULTS / f"optimizer-{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
