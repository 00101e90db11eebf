"""Every model variant of a run, side by side, in one process on the same test sentences.

    python bench/compare.py --store .distillery --workload emotion
    python bench/compare.py --quick        # a test slice; under 2 minutes on cached artifacts

Starts from the workload's `<workload>/latest` INT8 student (or `--int8`, an alias or
digest) and follows its lineage
to the FP32 student, the teacher and the tokens. The teacher's ONNX export and INT8
model are made with the same stages and parameters as the student's (reused when
the store already holds them, and kept under `<workload>/compare/...` aliases);
onnxruntime's `quantize_dynamic` of the student is the baseline INC must beat. The
QAT student (stage `qat_student`: INC quantization-aware fine-tuning of the same
student, exported as QDQ INT8 ONNX) is built, or reused, the same way.

For each variant: accuracy and macro-F1 on the test split, batch-1 latency p50/p95
over test sentences at their real lengths (all variants timed in turns, `--rounds`
of them, each reporting its median round: see tasks/timing.py), throughput at
batch 32 (test order, padded per batch), file size, and each one's ratio to the
teacher in FP32 PyTorch.
Writes JSON and a markdown table.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.stage import Progress, Stage, run_stage  # noqa: E402
from artifacts.store import ArtifactRef, ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from tasks import export, qat, quantize  # noqa: E402
from tasks.batching import pad  # noqa: E402
from tasks.evaluate import onnx_predictor, torch_predictor  # noqa: E402
from tasks.timing import Predict, interleaved_latency_ms, predictions  # noqa: E402
from tasks.tokenize import read_tokens  # noqa: E402

BASELINE = "teacher FP32 PyTorch"


def ref_of(store: ArtifactStore, digest: str) -> ArtifactRef:
    return ArtifactRef(kind=store.manifest(digest)["kind"], digest=digest)


def cached_or_run(store: ArtifactStore, stage: Stage, params, inputs: dict[str, ArtifactRef], alias: str) -> ArtifactRef:
    """The artifact this stage made from these inputs before, or a new one; kept by an alias."""
    key = stage.key(params, inputs)
    for digest in store.digests():
        if store.manifest(digest).get("key") == key and store.verify(digest).ok:
            ref = ref_of(store, digest)
            break
    else:
        print(f"  building {alias} ...", flush=True)
        ref = run_stage(stage, params, inputs, store, Progress(lambda message: None, bar=False))
    store.set_alias(alias, ref)
    return ref


def int8_student(store: ArtifactStore, workload: str, start: str | None) -> ArtifactRef:
    """`start` (an alias or a digest) or the workload's latest run; it must be a `quantize` output."""
    if start is None:
        return store.resolve_alias(f"{workload}/latest")
    if start in store.aliases():
        ref = store.resolve_alias(start)
    elif start in store.digests():
        ref = ref_of(store, start)
    else:
        raise SystemExit(f"--int8 {start!r} is neither an alias nor a full artifact digest in {store.root}: "
                         f"`python -m artifacts --store {store.root} list` shows both")
    if store.manifest(ref).get("stage") != quantize.STAGE.name:
        raise SystemExit(f"--int8 {start!r} was made by stage {store.manifest(ref).get('stage')!r}, not "
                         f"{quantize.STAGE.name!r}: pass the INT8 student of a run, e.g. {workload}/latest")
    return ref


def export_params_of(store: ArtifactStore, onnx: ArtifactRef | str) -> export.ExportParams:
    """The parameters an ONNX artifact was exported with.

    Content addressing keeps an artifact's first manifest, so a plain graph exported
    today can carry a manifest from before `fuse` existed. Such exports were all plain:
    a missing `fuse` means False, not today's default.
    """
    return export.ExportParams.model_validate({"fuse": False, **store.manifest(onnx)["params"]})


def lineage(store: ArtifactStore, workload: str, qat_params: qat.QATParams, start: str | None = None) -> dict[str, ArtifactRef]:
    int8 = int8_student(store, workload, start)
    quantized = store.manifest(int8)
    onnx = ref_of(store, quantized["upstream"]["onnx"])
    student = ref_of(store, store.manifest(onnx)["upstream"]["model"])
    teacher = ref_of(store, store.manifest(student)["upstream"]["teacher"])
    tokens = ref_of(store, quantized["upstream"]["tokens"])
    export_params = export_params_of(store, onnx)
    quantize_params = quantize.QuantizeParams.model_validate(quantized["params"])
    teacher_onnx = cached_or_run(store, export.STAGE, export_params, {"model": teacher, "tokens": tokens}, f"{workload}/compare/teacher-onnx")
    teacher_int8 = cached_or_run(store, quantize.STAGE, quantize_params, {"onnx": teacher_onnx, "tokens": tokens},
                                 f"{workload}/compare/teacher-int8")
    student_qat = cached_or_run(store, qat.STAGE, qat_params, {"tokens": tokens, "student": student}, f"{workload}/compare/student-qat")
    return {"tokens": tokens, "teacher": teacher, "teacher_onnx": teacher_onnx, "teacher_int8": teacher_int8,
            "student": student, "student_onnx": onnx, "student_int8": int8, "student_qat": student_qat}


def quality(predict: Predict, sequences: list[np.ndarray], labels: np.ndarray, classes: int) -> dict:
    # The evaluate stage's batches: dynamic INT8 quantizes each batch's activations with
    # one scale, so batch composition can flip a few predictions.
    predicted = predictions(predict, sequences)
    f1 = []
    for c in range(classes):
        tp = int(((predicted == c) & (labels == c)).sum())
        fp, fn = int(((predicted == c) & (labels != c)).sum()), int(((predicted != c) & (labels == c)).sum())
        f1.append(2 * tp / max(1, 2 * tp + fp + fn))
    return {"accuracy": round(float((predicted == labels).mean()), 5), "macro_f1": round(float(np.mean(f1)), 5)}


def throughput(predict: Predict, sequences: list[np.ndarray], batch_size: int = 32) -> float:
    batches = [pad(sequences, range(i, min(i + batch_size, len(sequences)))) for i in range(0, len(sequences), batch_size)]
    predict(*(t.numpy() for t in batches[0]))  # warm-up
    started = time.perf_counter()
    for ids, mask in batches:
        predict(ids.numpy(), mask.numpy())
    return round(len(sequences) / (time.perf_counter() - started), 1)


def evaluation_sentences(tokens: Path, quick: bool) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """The test split (a seeded 500 with `quick`), its labels, and the sentences timed at batch 1."""
    test_ids, test_labels = read_tokens(tokens, "test")
    rng = np.random.default_rng(0)
    if quick:
        pick = np.sort(rng.choice(len(test_ids), size=min(500, len(test_ids)), replace=False))
        test_ids, test_labels = [test_ids[i] for i in pick], test_labels[pick]
    timed = [test_ids[i] for i in rng.choice(len(test_ids), size=min(100 if quick else 300, len(test_ids)), replace=False)]
    return test_ids, test_labels, timed


def compare(store: ArtifactStore, workload: str, quick: bool, threads: int, qat_params: qat.QATParams,
            rounds: int, start: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    refs = lineage(store, workload, qat_params, start)
    folder = {name: store.open(ref) for name, ref in refs.items()}
    test_ids, test_labels, timed = evaluation_sentences(folder["tokens"], quick)
    names = json.loads((folder["tokens"] / "labels.json").read_text())["names"]
    stream = test_ids[: 320 if quick else len(test_ids)]
    with tempfile.TemporaryDirectory(prefix="ort-baseline-") as scratch:
        baseline_path = Path(scratch) / "model.onnx"
        quantize.ort_dynamic_baseline(folder["student_onnx"] / "model.onnx", baseline_path)
        variants = {
            BASELINE: torch_predictor(folder["teacher"]),
            "teacher FP32 ONNX": onnx_predictor(folder["teacher_onnx"], threads),
            "teacher INT8 (INC)": onnx_predictor(folder["teacher_int8"], threads),
            "student FP32 PyTorch": torch_predictor(folder["student"]),
            "student FP32 ONNX": onnx_predictor(folder["student_onnx"], threads),
            "student INT8 (INC)": onnx_predictor(folder["student_int8"], threads),
            "student INT8 (onnxruntime quantize_dynamic)": onnx_predictor(baseline_path.parent, threads),
            "student QAT INT8 (INC QAT, QDQ)": onnx_predictor(folder["student_qat"], threads),
        }
        rows = {}
        for name, (predict, size) in variants.items():
            print(f"  measuring {name} ...", flush=True)
            rows[name] = {**quality(predict, test_ids, test_labels, len(names)),
                          "throughput_batch32": throughput(predict, stream), "size_bytes": size}
        print(f"  timing batch-1 latency: {rounds} rounds over {len(timed)} sentences ...", flush=True)
        latency = interleaved_latency_ms({name: predict for name, (predict, _) in variants.items()}, timed, rounds, warmup=10)
    base = {**rows[BASELINE], **latency[BASELINE]}
    for name, row in rows.items():
        row.update(latency[name])
        row["speedup_p50"] = round(base["latency_p50_ms"] / row["latency_p50_ms"], 2)
        row["throughput_ratio"] = round(row["throughput_batch32"] / base["throughput_batch32"], 2)
        row["size_ratio"] = round(base["size_bytes"] / row["size_bytes"], 2)
    return {"workload": workload, "machine": machine(), "quick": quick, "threads": threads, "test_sentences": len(test_ids),
            "timed_sentences": len(timed), "latency_rounds": rounds, "throughput_sentences": len(stream),
            "qat": qat_params.model_dump(), "artifacts": {name: ref.digest for name, ref in refs.items()}, "models": rows}


def markdown(result: dict) -> str:
    lines = [f"{result['workload']}: {result['test_sentences']} test sentences; batch-1 latency over "
             f"{result['timed_sentences']}, every model timed in turns, median of {result['latency_rounds']} rounds "
             f"(p50 range: fastest to slowest round); throughput over {result['throughput_sentences']}; "
             f"{result['threads']} threads. {machine_line(result['machine'])}.", "",
             "| model | accuracy | macro-F1 | p50 ms | p50 range | p95 ms | batch-32 sent/s | MB | faster (p50) | throughput | smaller |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        spread = f"{min(r['latency_p50_rounds_ms']):.2f}–{max(r['latency_p50_rounds_ms']):.2f}"
        lines.append(f"| {name} | {r['accuracy']:.2%} | {r['macro_f1']:.4f} | {r['latency_p50_ms']:.2f} | {spread} | {r['latency_p95_ms']:.2f} | "
                     f"{r['throughput_batch32']:.0f} | {r['size_bytes'] / 1e6:.1f} | {r['speedup_p50']:.1f}x | "
                     f"{r['throughput_ratio']:.1f}x | {r['size_ratio']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = command.parser(__doc__, "compare", "the INT8 student to start from: an alias or a digest",
                            "500 test sentences, 100 timed, 320 for throughput")
    parser.add_argument("--qat-epochs", type=float, default=qat.QATParams().epochs, help="epochs of quantization-aware fine-tuning")
    parser.add_argument("--qat-learning-rate", type=float, default=qat.QATParams().learning_rate)
    parser.add_argument("--rounds", type=int, help="batch-1 latency rounds, every model timed once per round (default: 5; 2 with --quick)")
    args = parser.parse_args()
    qat_params = qat.QATParams(epochs=args.qat_epochs, learning_rate=args.qat_learning_rate)
    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    result = compare(ArtifactStore(args.store), args.workload, args.quick, args.threads, qat_params, rounds, args.int8)
    command.write_results(result, markdown(result), "compare", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
