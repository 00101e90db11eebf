"""Does fusing the ONNX graph pay? The same teacher and student, exported plain and
fused (onnxruntime's transformer kernels, `export_onnx --fuse`), each in FP32 and INC
INT8, measured in one process and timed in turns.

    python bench/fusion.py --store .distillery --workload emotion [--int8 ALIAS|DIGEST] [--quick]

Measures, like compare.py, the run that `<workload>/latest` records (or `--int8`);
its record names the teacher and the student and each one's tokens. Builds (or
reuses by cache key) both exports and both INT8 models of each, from that model's own
tokens, with the run's own export and quantize parameters. onnxruntime's fusions are
written for BERT: a model of another architecture (the smoke run's MPNet teacher) has
only its plain graph, said so in the table. Each model is scored on its own tokens of
the same test rows. Prints and writes a markdown table and JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.store import ArtifactRef, ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.command import find_run  # noqa: E402
from bench.compare import cached_with_alias, evaluation_sentences, export_params_of  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from tasks.stages import export, quantize  # noqa: E402
from tasks.formats import model_folder, onnx_file, open_tokens  # noqa: E402
from tasks.measure.metrics import interleaved_latency_ms, quality  # noqa: E402
from tasks.measure.predictors import onnx_predictor  # noqa: E402

MODELS = {"teacher": "teacher_tokens", "student": "student_tokens"}  # model role -> the role of the tokens it reads


def architecture(store: ArtifactStore, model: ArtifactRef) -> str:
    return json.loads((model_folder(store.open(model)) / "config.json").read_text())["model_type"]


def variants(store: ArtifactStore, workload: str, start: str | None) -> tuple[dict[str, tuple[Path, str]], dict[str, Path], list[str]]:
    """Each variant's folder and the model it comes from; each model's tokens folder; notes for the table."""
    run = find_run(store, workload, start)
    export_params = export_params_of(store, run.role("student_onnx"))
    quantize_params = quantize.QuantizeParams.model_validate(store.manifest(run.role("student_int8"))["params"])
    folders: dict[str, tuple[Path, str]] = {}
    notes = []
    for name, tokens_role in MODELS.items():
        model, tokens = run.role(name), run.role(tokens_role)
        kind = architecture(store, model)
        # Exported with fuse on, an architecture the fusions do not cover gives the plain graph
        # again: the same artifact, measured twice, so it is left out.
        fusable = kind in export.FUSABLE_ARCHITECTURES
        if not fusable:
            notes.append(f"{name}: {kind}, which onnxruntime's transformer fusions do not cover: plain graph only")
        for fuse in (False, True) if fusable else (False,):
            graph = "fused" if fuse else "plain"
            # An unfusable model keeps the run's parameters: `fuse` changes nothing in its graph,
            # and a second key for the same content would never be found again (the store keeps
            # an artifact's first manifest), so it would be rebuilt on every call.
            params = export_params.model_copy(update={"fuse": fuse}) if fusable else export_params
            fp32 = cached_with_alias(store, export.STAGE, params, {"model": model, "tokens": tokens}, f"{workload}/fusion/{name}-{graph}")
            int8 = cached_with_alias(store, quantize.STAGE, quantize_params, {"onnx": fp32, "tokens": tokens},
                                 f"{workload}/fusion/{name}-{graph}-int8")
            folders[f"{name} FP32 ONNX, {graph}"] = (store.open(fp32), name)
            folders[f"{name} INT8 (INC), {graph}"] = (store.open(int8), name)
    return folders, {name: store.open(run.role(role)) for name, role in MODELS.items()}, notes


def measure(folders: dict[str, tuple[Path, str]], tokens_folders: dict[str, Path], quick: bool, threads: int, rounds: int) -> dict:
    """Every variant on its model's own tokens of the same test rows, timed in turns."""
    tokens = {name: open_tokens(folder) for name, folder in tokens_folders.items()}
    labels, test = evaluation_sentences(tokens, quick)
    classes = len(tokens["student"].labels)
    predictors = {name: onnx_predictor(folder, threads) for name, (folder, _) in folders.items()}
    rows = {}
    for name, (predict, size) in predictors.items():
        sentences = test[folders[name][1]]
        rows[name] = {**quality(predict, sentences.ids, labels, classes, sentences.pad_id), "size_bytes": size,
                      "nodes": len(onnx.load(str(onnx_file(folders[name][0])), load_external_data=False).graph.node)}
    timed = {name: test[model].timed for name, (_, model) in folders.items()}
    latency = interleaved_latency_ms({name: predict for name, (predict, _) in predictors.items()}, timed, rounds, warmup=10)
    for name, row in rows.items():
        row.update(latency[name])
    return {"test_sentences": len(labels), "timed_sentences": len(test["student"].timed),
            "tokenizers": {name: t.spec.tokenizer for name, t in tokens.items()}, "models": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['workload']}: {result['test_sentences']} test sentences, batch-1 latency over {result['timed_sentences']}, "
             f"every model timed in turns, median of {result['rounds']} rounds; {result['threads']} threads. "
             f"{machine_line(result['machine'])}.", *(f"Note: {note}." for note in result["notes"]), "",
             "| model | graph nodes | accuracy | macro-F1 | p50 ms | p50 range | p95 ms | MB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in result["models"].items():
        rounds_ms = row["latency_p50_rounds_ms"]
        lines.append(f"| {name} | {row['nodes']} | {row['accuracy']:.2%} | {row['macro_f1']:.4f} | {row['latency_p50_ms']:.2f} | "
                     f"{min(rounds_ms):.2f}–{max(rounds_ms):.2f} | {row['latency_p95_ms']:.2f} | {row['size_bytes'] / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = command.parser(__doc__, "fusion", "the run to measure",
                          "500 test sentences, 100 timed, 2 rounds (as compare.py --quick)").parse_args()
    store = ArtifactStore(args.store)
    folders, tokens, notes = variants(store, args.workload, args.int8)
    rounds = 2 if args.quick else 5
    measured = measure(folders, tokens, args.quick, args.threads, rounds)
    result = {"workload": args.workload, "machine": machine(), "quick": args.quick, "threads": args.threads, "rounds": rounds,
              "notes": notes, **measured}
    command.write_results(result, markdown(result), "fusion", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
