"""`distillery export NAME --out DIR`: the production INT8 student as a folder another service can use.

    distillery export emotion --out emotion-int8/
    python -c "from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('emotion-int8')"

The folder follows the Hugging Face convention, so the usual loaders read it:

    model.onnx        the INT8 graph (inputs input_ids, attention_mask; output logits)
    tokenizer files   exactly those the pipeline encoded the student's texts with
    config.json       the student's transformers config with id2label, label2id, and the run
    README.md         a model card: YAML front matter (model-index with test accuracy and
                      macro-F1, datasets, base models, license), the recipe, the teacher's
                      figures, latency with the machine it was measured on

Everything comes from the workload's production run (its record's roles), checked by the
store as any read is; DIR must be new or empty, and is written whole (built beside, then
renamed) so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from artifacts.edge import add_store_argument, bad_input
from artifacts.promotions import production_run
from artifacts.runs import INT8_ROLE, RunRecord
from artifacts.store import ArtifactStore, StoreError
from tasks.errors import DistilleryError

# Where the packaged models come from, for the card's base_model (local folders and tiny models have none).
BASE_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "mpnet": "sentence-transformers/all-mpnet-base-v2"}
LICENSE = "apache-2.0"  # both packaged base models' license


def _manifest(store: ArtifactStore, record: RunRecord, role: str) -> dict:
    return store.manifest(record.role(role))


def model_card(name: str, record: RunRecord, store: ArtifactStore) -> str:
    """The card's text: YAML front matter Hugging Face reads, then what a user needs to trust the model."""
    evaluation = json.loads((store.open(record.role("evaluation")) / "metrics.json").read_text())
    models = evaluation["models"]
    int8, teacher = models[INT8_ROLE], models["teacher"]
    source = _manifest(store, record, "dataset")["params"].get("source", "")
    revision = _manifest(store, record, "dataset")["params"].get("revision")
    teacher_model = _manifest(store, record, "teacher")["params"]["model"]
    student = _manifest(store, record, "student")["params"]
    ran = _manifest(store, record, "evaluation").get("runtime", {})
    machine = f"{ran.get('cpu') or 'a CPU the run did not record'}, {evaluation.get('threads', ran.get('torch_threads', '?'))} threads"
    base = [BASE_MODELS[m] for m in (student.get("init"), teacher_model) if m in BASE_MODELS]
    dataset_line = f"  - {json.dumps(source)}" if source and not os.path.isabs(source) else "  []"
    front = [
        "---",
        "language: en",
        f"license: {LICENSE}",
        "library_name: onnxruntime",
        "pipeline_tag: text-classification",
        "tags: [text-classification, onnx, int8, knowledge-distillation, distillery]",
        "base_model:" + ("".join(f"\n  - {m}" for m in base) if base else " []"),
        "datasets:" + (f"\n{dataset_line}" if dataset_line != "  []" else " []"),
        "model-index:",
        f"  - name: {json.dumps(name + '-int8')}",
        "    results:",
        "      - task: {type: text-classification, name: Text Classification}",
        f"        dataset: {{name: {json.dumps(source or name)}, type: {json.dumps(source or name)}, split: test}}",
        "        metrics:",
        f"          - {{type: accuracy, value: {int8['accuracy']:.4f}, name: accuracy}}",
        f"          - {{type: f1, value: {int8['macro_f1']:.4f}, name: macro-F1, args: {{average: macro}}}}",
        "---",
    ]
    speedup = teacher["latency_p50_ms"] / int8["latency_p50_ms"] if int8.get("latency_p50_ms") else float("nan")
    body = [
        "",
        f"# {name}: an INT8 text classifier distilled by distillery",
        "",
        f"Classes: {', '.join(evaluation['labels'])}. Run record `{record.digest}` "
        f"(`distillery` workload `{name}`).",
        "",
        "## Recipe",
        "",
        f"- data: `{source}`" + (f" at revision `{revision}`" if revision else "") + f", {evaluation['test_rows']} test rows;",
        f"- teacher: `{teacher_model}`, fine-tuned on the training split;",
        f"- student: `{student.get('init')}`" + (f", layers {student.get('layers')}" if student.get("layers") else "")
        + ", distilled from the teacher's soft labels;",
        f"- INT8: Intel Neural Compressor, {_manifest(store, record, INT8_ROLE)['params'].get('approach', '?')} "
        f"post-training quantization, ONNX Runtime.",
        "",
        "## Figures on the test split",
        "",
        "| model | accuracy | macro-F1 | batch-1 p50 latency |",
        "|---|---:|---:|---:|",
        f"| teacher FP32 (PyTorch) | {teacher['accuracy']:.2%} | {teacher['macro_f1']:.4f} | {teacher['latency_p50_ms']:.2f} ms |",
        f"| this INT8 student (ONNX Runtime) | {int8['accuracy']:.2%} | {int8['macro_f1']:.4f} | {int8['latency_p50_ms']:.2f} ms |",
        "",
        f"{speedup:.1f}x the teacher's batch-1 speed, measured on {machine}; latencies move with the CPU.",
        "",
        "## Use",
        "",
        "```python",
        "import numpy as np, onnxruntime as ort",
        "from transformers import AutoTokenizer",
        "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER\")",
        "session = ort.InferenceSession(\"THIS_FOLDER/model.onnx\")",
        "batch = tokenizer([\"i feel wonderful today\"], return_tensors=\"np\", truncation=True, padding=True)",
        "logits = session.run(None, {\"input_ids\": batch[\"input_ids\"], \"attention_mask\": batch[\"attention_mask\"]})[0]",
        "```",
        "",
        "Labels are `config.json`'s `id2label`. Texts longer than the tokenizer's `model_max_length` are truncated, "
        "as in training.",
        "",
    ]
    return "\n".join(front + body)


def export(store: ArtifactStore, name: str, out: Path) -> Path:
    """Writes the production INT8 student of `name` to `out` (new or empty); returns it."""
    production = production_run(store, name)
    if production is None:
        raise DistilleryError(f"workload {name!r} has no production model in {store.root}: promote a run first "
                              f"(`distillery promote {name} RUN`)")
    ref, record = production
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DistilleryError(f"--out {out}: exists and is not an empty folder; give a new folder")
    from tasks.formats import onnx_file, open_tokens

    tokens = open_tokens(store.open(record.role("student_tokens")))
    config = json.loads((store.open(record.role("student")) / "model" / "config.json").read_text())
    labels = record.labels or tokens.labels
    config.update({"id2label": {str(i): label for i, label in enumerate(labels)},
                   "label2id": {label: i for i, label in enumerate(labels)},
                   "distillery": {"workload": name, "run": ref.digest, "int8": record.role(INT8_ROLE).digest,
                                  "max_length": tokens.spec.max_length, "pad_id": tokens.spec.pad_id}})
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copyfile(onnx_file(store.open(record.role(INT8_ROLE))), staging / "model.onnx")
        for file in tokens.tokenizer_folder.iterdir():
            if file.is_file():
                shutil.copyfile(file, staging / file.name)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        (staging / "README.md").write_text(model_card(name, record, store))
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None, prog: str = "distillery export") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("name", help="the workload whose production INT8 model to export")
    parser.add_argument("--out", required=True, type=Path, help="a new (or empty) folder to write")
    add_store_argument(parser)
    args = parser.parse_args(argv)
    try:
        out = export(ArtifactStore(args.store), args.name, args.out)
    except (DistilleryError, StoreError) as exc:
        return bad_input(str(exc))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
