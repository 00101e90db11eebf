"""Does fusing the ONNX graph pay? The same teacher and student, exported plain and
fused (onnxruntime's transformer kernels, `export_onnx --fuse`), each in FP32 and INC
INT8, measured in one process and timed in turns.

    python bench/fusion.py --store .distillery --workload emotion [--int8 ALIAS|DIGEST] [--quick]

Starts, like compare.py, from the workload's latest INT8 student and follows its
lineage to the student and teacher models; builds (or reuses by cache key) both
exports and both INT8 models of each with the run's own export and quantize
parameters. Prints and writes a markdown table and JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.store import ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from bench.compare import cached_or_run, int8_student, quality, ref_of, evaluation_sentences  # noqa: E402
from tasks import export, quantize  # noqa: E402
from tasks.evaluate import onnx_predictor  # noqa: E402
from tasks.timing import interleaved_latency_ms  # noqa: E402


def variants(store: ArtifactStore, workload: str, start: str | None) -> dict[str, Path]:
    int8 = store.manifest(int8_student(store, workload, start))
    onnx = store.manifest(int8["upstream"]["onnx"])
    tokens = ref_of(store, int8["upstream"]["tokens"])
    student = ref_of(store, onnx["upstream"]["model"])
    models = {"teacher": ref_of(store, store.manifest(student)["upstream"]["teacher"]), "student": student}
    quantize_params = quantize.QuantizeParams.model_validate(int8["params"])
    folders = {}
    for name, model in models.items():
        for fuse in (False, True):
            graph = "fused" if fuse else "plain"
            export_params = export.ExportParams.model_validate({**onnx["params"], "fuse": fuse})
            fp32 = cached_or_run(store, export.STAGE, export_params, {"model": model, "tokens": tokens}, f"{workload}/fusion/{name}-{graph}")
            int8_ref = cached_or_run(store, quantize.STAGE, quantize_params, {"onnx": fp32, "tokens": tokens}, f"{workload}/fusion/{name}-{graph}-int8")
            folders[f"{name} FP32 ONNX, {graph}"] = store.open(fp32)
            folders[f"{name} INT8 (INC), {graph}"] = store.open(int8_ref)
    folders["tokens"] = store.open(tokens)
    return folders


def main() -> int:
    args = command.parser(__doc__, "fusion", "the INT8 student to start from: an alias or a digest",
                          "500 test sentences, 100 timed, 2 rounds (as compare.py --quick)").parse_args()
    store = ArtifactStore(args.store)
    folders = variants(store, args.workload, args.int8)
    test_ids, test_labels, timed = evaluation_sentences(folders.pop("tokens"), args.quick)
    classes = len(json.loads((folders["student FP32 ONNX, plain"] / "config.json").read_text())["id2label"])
    rounds = 2 if args.quick else 5
    predictors = {name: onnx_predictor(folder, args.threads) for name, folder in folders.items()}
    rows = {name: {**quality(predict, test_ids, test_labels, classes), "size_bytes": size} for name, (predict, size) in predictors.items()}
    latency = interleaved_latency_ms({name: predict for name, (predict, _) in predictors.items()}, timed, rounds, warmup=10)
    host = machine()
    lines = [f"{args.workload}: {len(test_ids)} test sentences, batch-1 latency over {len(timed)}, every model timed in turns, "
             f"median of {rounds} rounds; {args.threads} threads. {machine_line(host)}.", "",
             "| model | graph nodes | accuracy | macro-F1 | p50 ms | p50 range | p95 ms | MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        row.update(latency[name])
        row["nodes"] = len(onnx.load(str(folders[name] / "model.onnx"), load_external_data=False).graph.node)
        rounds_ms = row["latency_p50_rounds_ms"]
        lines.append(f"| {name} | {row['nodes']} | {row['accuracy']:.2%} | {row['macro_f1']:.4f} | {row['latency_p50_ms']:.2f} | "
                     f"{min(rounds_ms):.2f}–{max(rounds_ms):.2f} | {row['latency_p95_ms']:.2f} | {row['size_bytes'] / 1e6:.1f} |")
    result = {"workload": args.workload, "machine": host, "threads": args.threads, "rounds": rounds, "models": rows}
    command.write_results(result, "\n".join(lines) + "\n", "fusion", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
