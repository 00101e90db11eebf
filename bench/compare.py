"""Every model variant of a run, side by side, in one process on the same test sentences.

    python bench/compare.py --store .distillery --workload emotion
    python bench/compare.py --quick        # a test slice; under 2 minutes on cached artifacts

Measures the run that `<workload>/latest` records (or `--int8`: a run record, or a
run's INT8 student). Its record names the teacher, the FP32 student, its ONNX and
INT8 models and both tokens artifacts. The teacher's ONNX export and INT8 model are
made with the same stages and parameters as the student's, from the teacher's own
tokens (reused when the store already holds them, and kept under
`<workload>/compare/...` aliases); onnxruntime's `quantize_dynamic` of the student
is the baseline INC must beat. The QAT student (stage `qat_student`: INC
quantization-aware fine-tuning of the same student on its tokens, exported as QDQ
INT8 ONNX) is built, or reused, the same way.

Teacher and student may read different tokenizers: every model is measured on its
own tokens of the same test rows (the run's two tokens artifacts are row-aligned).
For each variant: accuracy, macro-F1 and per-class F1 on the test split
(tasks/measure/metrics.py, as the evaluate stage scores), batch-1 latency p50/p95 over test
sentences at their real lengths (all variants timed in turns, `--rounds` of them,
each reporting its median round: see tasks/measure/metrics.py), throughput at batch 32 (test
order, padded per batch), file size, and each one's ratio to the teacher in FP32
PyTorch. Writes JSON and a markdown table.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from artifacts.cache import cached_or_run as cache  # noqa: E402
from artifacts.stage import Progress, Stage  # noqa: E402
from artifacts.store import ArtifactRef, ArtifactStore  # noqa: E402
from bench import command  # noqa: E402
from bench.command import find_run  # noqa: E402
from bench.machine import machine, machine_line  # noqa: E402
from tasks.stages import export, qat, quantize  # noqa: E402
from tasks.data.batching import pad  # noqa: E402
from tasks.formats import Tokens, onnx_file, open_tokens  # noqa: E402
from tasks.measure.metrics import Predict, interleaved_latency_ms, quality  # noqa: E402
from tasks.measure.predictors import onnx_predictor, torch_predictor  # noqa: E402

BASELINE = "teacher FP32 PyTorch"
RUN_ROLES = ("teacher_tokens", "student_tokens", "teacher", "student", "student_onnx", "student_int8")
# name, the artifact it loads, and how: every variant of the run and of this benchmark.
VARIANTS = (
    (BASELINE, "teacher", "torch"),
    ("teacher FP32 ONNX", "teacher_onnx", "onnx"),
    ("teacher INT8 (INC)", "teacher_int8", "onnx"),
    ("student FP32 PyTorch", "student", "torch"),
    ("student FP32 ONNX", "student_onnx", "onnx"),
    ("student INT8 (INC)", "student_int8", "onnx"),
    ("student INT8 (onnxruntime quantize_dynamic)", "student_ort_dynamic", "onnx"),
    ("student QAT INT8 (INC QAT, QDQ)", "student_qat", "onnx"),
)


def side_of(artifact: str) -> str:
    """Whose tokens an artifact reads: every teacher_* model the teacher's, the rest the student's."""
    return "teacher" if artifact.startswith("teacher") else "student"


def cached_with_alias(store: ArtifactStore, stage: Stage, params, inputs: dict[str, ArtifactRef], alias: str,
                  progress: Progress | None = None) -> ArtifactRef:
    """The artifact this stage made from these inputs before, or a new one (the one cache); kept by an alias."""
    outcome = cache(stage, params, inputs, store, progress or Progress(lambda message: None, bar=False))
    if not outcome.cached:
        print(f"  built {alias}", flush=True)
    store.set_alias(alias, outcome.ref)
    return outcome.ref


def export_params_of(store: ArtifactStore, onnx: ArtifactRef | str) -> export.ExportParams:
    """The parameters an ONNX artifact was exported with.

    Content addressing keeps an artifact's first manifest, so a plain graph exported
    today can carry a manifest from before `fuse` existed. Such exports were all plain:
    a missing `fuse` means False, not today's default.
    """
    return export.ExportParams.model_validate({"fuse": False, **store.manifest(onnx)["params"]})


def lineage(store: ArtifactStore, workload: str, qat_params: qat.QATParams, start: str | None = None) -> dict[str, ArtifactRef]:
    """The run's roles, and the teacher's ONNX and INT8 models and the QAT student, built or reused."""
    run = find_run(store, workload, start)
    refs = {role: run.role(role) for role in RUN_ROLES}
    # Parameters, not lineage, come from the manifests: the teacher is exported and
    # quantized exactly as this run's student was.
    export_params = export_params_of(store, refs["student_onnx"])
    quantize_params = quantize.QuantizeParams.model_validate(store.manifest(refs["student_int8"])["params"])
    teacher_tokens, student_tokens = refs["teacher_tokens"], refs["student_tokens"]
    refs["teacher_onnx"] = cached_with_alias(store, export.STAGE, export_params, {"model": refs["teacher"], "tokens": teacher_tokens},
                                         f"{workload}/compare/teacher-onnx")
    refs["teacher_int8"] = cached_with_alias(store, quantize.STAGE, quantize_params, {"onnx": refs["teacher_onnx"], "tokens": teacher_tokens},
                                         f"{workload}/compare/teacher-int8")
    refs["student_qat"] = cached_with_alias(store, qat.STAGE, qat_params, {"tokens": student_tokens, "student": refs["student"]},
                                        f"{workload}/compare/student-qat")
    return refs


def aligned_split(tokens: dict[str, Tokens], split: str) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    """Each tokens artifact's ids of one split, and the split's labels.

    Models with their own tokenizers are compared row by row, so every artifact must
    hold the same rows: the same texts (by the digest tokenize records) and labels.
    """
    read = {name: t.split(split) for name, t in tokens.items()}
    labels = next(iter(read.values()))[1]
    texts = {t.spec.texts_sha256.get(split) for t in tokens.values()}
    if len(texts) > 1 or any(not np.array_equal(theirs, labels) for _, theirs in read.values()):
        names = ", ".join(f"{name} ({t.folder.name[:12]})" for name, t in tokens.items())
        raise SystemExit(f"the {split} rows of the tokens of {names} differ: their models cannot be compared row by row")
    return {name: ids for name, (ids, _) in read.items()}, labels


def evaluation_rows(count: int, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """Test rows measured (a seeded 500 with `quick`), and those of them timed at batch 1."""
    rng = np.random.default_rng(0)
    measured = np.sort(rng.choice(count, size=min(500, count), replace=False)) if quick else np.arange(count)
    timed = measured[rng.choice(len(measured), size=min(100 if quick else 300, len(measured)), replace=False)]
    return measured, timed


@dataclass(frozen=True)
class Sentences:
    """One tokenizer's ids of the measured test rows (the same rows for every tokenizer)."""

    ids: list[np.ndarray]
    timed: list[np.ndarray]  # at batch 1
    stream: list[np.ndarray]  # for throughput
    pad_id: int


def evaluation_sentences(tokens: dict[str, Tokens], quick: bool) -> tuple[np.ndarray, dict[str, Sentences]]:
    """The labels of the measured test rows, and each tokens artifact's own ids of them."""
    ids, labels = aligned_split(tokens, "test")
    measured, timed = evaluation_rows(len(labels), quick)
    stream = measured[: 320 if quick else len(measured)]
    sets = {name: Sentences([ids[name][i] for i in measured], [ids[name][i] for i in timed],
                          [ids[name][i] for i in stream], tokens[name].spec.pad_id) for name in tokens}
    return labels[measured], sets


def throughput(predict: Predict, sequences: list[np.ndarray], pad_id: int, batch_size: int = 32) -> float:
    batches = [pad(sequences, range(i, min(i + batch_size, len(sequences))), pad_id) for i in range(0, len(sequences), batch_size)]
    predict(*(t.numpy() for t in batches[0]))  # warm-up
    started = time.perf_counter()
    for ids, mask in batches:
        predict(ids.numpy(), mask.numpy())
    return round(len(sequences) / (time.perf_counter() - started), 1)


def load(engine: str, folder: Path, threads: int) -> tuple[Predict, int]:
    return torch_predictor(folder) if engine == "torch" else onnx_predictor(folder, threads)


def compare(store: ArtifactStore, workload: str, quick: bool, threads: int, qat_params: qat.QATParams,
            rounds: int, start: str | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    refs = lineage(store, workload, qat_params, start)
    folder = {name: store.open(ref) for name, ref in refs.items()}
    tokens = {side: open_tokens(folder[f"{side}_tokens"]) for side in ("teacher", "student")}
    labels, test = evaluation_sentences(tokens, quick)
    classes = len(tokens["student"].labels)
    with tempfile.TemporaryDirectory(prefix="ort-baseline-") as scratch:
        folder["student_ort_dynamic"] = Path(scratch)
        quantize.ort_dynamic_baseline(onnx_file(folder["student_onnx"]), onnx_file(Path(scratch)))
        variants = {name: (*load(engine, folder[artifact], threads), test[side_of(artifact)]) for name, artifact, engine in VARIANTS}
        rows = {}
        for name, (predict, size, sentences) in variants.items():
            print(f"  measuring {name} ...", flush=True)
            rows[name] = {**quality(predict, sentences.ids, labels, classes, sentences.pad_id),
                          "throughput_batch32": throughput(predict, sentences.stream, sentences.pad_id), "size_bytes": size}
        timed = {name: sentences.timed for name, (_, _, sentences) in variants.items()}
        print(f"  timing batch-1 latency: {rounds} rounds over {len(test['student'].timed)} sentences ...", flush=True)
        latency = interleaved_latency_ms({name: predict for name, (predict, _, _) in variants.items()}, timed, rounds, warmup=10)
    base = {**rows[BASELINE], **latency[BASELINE]}
    for name, row in rows.items():
        row.update(latency[name])
        row["speedup_p50"] = round(base["latency_p50_ms"] / row["latency_p50_ms"], 2)
        row["throughput_ratio"] = round(row["throughput_batch32"] / base["throughput_batch32"], 2)
        row["size_ratio"] = round(base["size_bytes"] / row["size_bytes"], 2)
    return {"workload": workload, "machine": machine(), "quick": quick, "threads": threads, "test_sentences": len(labels),
            "timed_sentences": len(test["student"].timed), "latency_rounds": rounds,
            "throughput_sentences": len(test["student"].stream),
            "tokenizers": {side: t.spec.tokenizer for side, t in tokens.items()},
            "qat": qat_params.model_dump(), "artifacts": {name: ref.digest for name, ref in refs.items()}, "models": rows}


def tokenizers_line(tokenizers: dict[str, str]) -> str:
    if tokenizers["teacher"] == tokenizers["student"]:
        return f"every model on {tokenizers['student']} tokens"
    return f"teacher models on {tokenizers['teacher']} tokens, student models on {tokenizers['student']} tokens of the same rows"


def markdown(result: dict) -> str:
    lines = [f"{result['workload']}: {result['test_sentences']} test sentences ({tokenizers_line(result['tokenizers'])}); "
             f"batch-1 latency over "
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
    parser = command.parser(__doc__, "compare", "the run to measure",
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
