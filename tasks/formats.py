"""What each kind of artifact holds, and the one reader and writer of each.

Every stage declares the format it writes (`Stage.writes`, checked when it publishes)
and reads its inputs through the readers here, so a file name is spelled in one
place. All formats are plain files: parquet, JSON, safetensors, ONNX. No pickle.

Rows stay aligned by construction: the tokens of a split are in the dataset's row
order, the augmented texts name their source row, and soft labels carry the digest
of the exact texts they were computed on (`distillation_texts_digest`), so a reader
can prove they belong to its texts before using them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Format:
    """An artifact kind and the files it must contain (relative paths; a trailing / is a folder)."""

    kind: str
    files: tuple[str, ...]
    description: str = ""

    def missing(self, folder: Path) -> list[str]:
        return [name for name in self.files if not (folder / name.rstrip("/")).exists()]


DATASET = Format("dataset", tuple(f"{s}.parquet" for s in SPLITS) + ("labels.json",),
                 "columns text (str) and label (int64) per split; label names in id order")
TOKENS = Format("tokens", tuple(f"{s}.parquet" for s in SPLITS) + ("labels.json", "tokens.json", "tokenizer/"),
                "unpadded token ids per split in dataset row order; the tokenizer and how it was used")
MODEL = Format("model", ("model/config.json", "model/model.safetensors"), "a transformers sequence classifier")
AUGMENTED = Format("augmented-texts", ("augmented.parquet",), "text variants of training rows: columns text, source (train row)")
SOFT_LABELS = Format("soft-labels", ("soft_labels.parquet", "soft_labels.json"),
                     "teacher logits, one row per distillation text (train rows, then augmented texts)")
ONNX = Format("onnx", ("model.onnx", "config.json"), "an ONNX graph: inputs input_ids, attention_mask; output logits")
EVALUATION = Format("report", ("metrics.json",), "quality, latency and size of each model")
RUN_REPORT = Format("run-report", ("report.md", "models.json"), "one run's report and plots")
DATA_CHECKS = Format("data-checks", ("checks.json",), "statistics of every split and the anomalies found in them")
DATA_COMPARISON = Format("data-comparison", ("comparison.json",),
                         "new training data against the production model's: shift, classes, rows, agreement")
JUDGEMENT = Format("judgement", ("judgement.json",), "the new INT8 student and the production one on the same test rows")
FEATURE_SPLITS = ("train", "validation")
TEACHER_FEATURES = Format("teacher-features", ("features.json",) + tuple(f"{s}{end}" for s in FEATURE_SPLITS
                                                                           for end in (".npy", ".offsets.npy")),
                          "hidden states after the teacher's frozen lower layers, per split: (tokens, hidden) "
                          "float16, row i at offsets[i]:offsets[i + 1], in dataset row order")
RUN_RECORD = Format("run", ("run.json",), "which artifact plays which role in one run")


def sha256_texts(texts: Sequence[str]) -> str:
    """Digest of an ordered list of texts (length-prefixed, so no two lists collide)."""
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def distillation_texts_digest(train_texts_sha256: str, augmented_texts: Sequence[str]) -> str:
    """The digest of the distillation set: the train split (by its digest), then the augmented texts."""
    return hashlib.sha256(f"{train_texts_sha256}:{sha256_texts(augmented_texts)}".encode()).hexdigest()


# -- dataset ----------------------------------------------------------------------------
def write_dataset(out: Path, splits: dict, names: list[str]) -> None:
    for split, frame in splits.items():
        frame.to_parquet(out / f"{split}.parquet", index=False)
    (out / "labels.json").write_text(json.dumps({"names": names}))


def read_labels(folder: Path) -> list[str]:
    """Label names in id order (dataset and tokens artifacts both carry them)."""
    return json.loads((folder / "labels.json").read_text())["names"]


def read_dataset(folder: Path) -> tuple[dict, list[str]]:
    import pandas as pd

    return {s: pd.read_parquet(folder / f"{s}.parquet") for s in SPLITS}, read_labels(folder)


def read_texts(folder: Path, split: str) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(folder / f"{split}.parquet", columns=["text"]).column("text").to_pylist()


# -- tokens -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSpec:
    """How a tokens artifact was made: enough to encode new text exactly the same way."""

    tokenizer: str  # the model source the tokenizer came from
    max_length: int
    pad_id: int
    mask_token: str | None
    special_tokens: dict[str, str]
    vocab_size: int
    texts_sha256: dict[str, str] = field(default_factory=dict)  # per split: digest of the texts tokenized


@dataclass(frozen=True)
class Tokens:
    folder: Path
    spec: TokenSpec
    labels: list[str]

    def split(self, name: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(unpadded id arrays, label ids) of one split, in dataset row order."""
        import pyarrow.parquet as pq

        table = pq.read_table(self.folder / f"{name}.parquet")
        ids = [np.asarray(row, dtype=np.int64) for row in table.column("input_ids").to_pylist()]
        return ids, np.array(table.column("label").to_numpy(), dtype=np.int64)  # writable copy

    @property
    def tokenizer_folder(self) -> Path:
        return self.folder / "tokenizer"


def write_token_split(out: Path, split: str, ids: Sequence[Sequence[int]], labels: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "input_ids": pa.array([list(map(int, s)) for s in ids], type=pa.list_(pa.int32())),
        "label": pa.array(np.asarray(labels), type=pa.int64()),
    }), out / f"{split}.parquet")


def write_token_spec(out: Path, spec: TokenSpec) -> None:
    (out / "tokens.json").write_text(json.dumps(spec.__dict__, indent=2, sort_keys=True))


def open_tokens(folder: Path) -> Tokens:
    spec = TokenSpec(**json.loads((folder / "tokens.json").read_text()))
    return Tokens(folder, spec, read_labels(folder))


# -- augmented texts --------------------------------------------------------------------
def write_augmented(out: Path, texts: Sequence[str], sources: Sequence[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array(list(texts), type=pa.string()),
                             "source": pa.array(list(sources), type=pa.int64())}), out / "augmented.parquet")


def read_augmented(folder: Path) -> tuple[list[str], np.ndarray]:
    """The variants' texts and the train row each was made from (empty when augmentation is off)."""
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "augmented.parquet")
    return table.column("text").to_pylist(), np.asarray(table.column("source").to_numpy(), dtype=np.int64)


# -- soft labels ------------------------------------------------------------------------
@dataclass(frozen=True)
class SoftLabels:
    logits: np.ndarray  # (rows, classes), float32
    texts_sha256: str
    train_rows: int


def write_soft_labels(out: Path, logits: np.ndarray, texts_sha256: str, train_rows: int, stats: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"logits": pa.array(logits.astype(np.float32).tolist(), type=pa.list_(pa.float32()))}),
                   out / "soft_labels.parquet")
    (out / "soft_labels.json").write_text(json.dumps(
        {"rows": int(len(logits)), "train_rows": int(train_rows), "texts_sha256": texts_sha256, **stats}, indent=2))


def read_soft_labels(folder: Path) -> SoftLabels:
    import pyarrow.parquet as pq

    meta = json.loads((folder / "soft_labels.json").read_text())
    rows = pq.read_table(folder / "soft_labels.parquet").column("logits").to_pylist()
    logits = np.array(rows, dtype=np.float32).reshape(len(rows), -1)
    return SoftLabels(logits, meta["texts_sha256"], int(meta["train_rows"]))


def soft_labels_problem(soft_folder: Path, tokens_folder: Path, augmented_folder: Path) -> str:
    """Why these soft labels do not belong to these texts ("" when they do)."""
    meta = json.loads((soft_folder / "soft_labels.json").read_text())
    train_sha = open_tokens(tokens_folder).spec.texts_sha256.get("train", "")
    texts, _ = read_augmented(augmented_folder)
    expected = distillation_texts_digest(train_sha, texts)
    if meta.get("texts_sha256") != expected:
        return (f"its {meta.get('rows')} rows were computed on other texts than these "
                f"{meta.get('train_rows')} + {len(texts)} (texts digest {str(meta.get('texts_sha256'))[:12]}, "
                f"expected {expected[:12]})")
    return ""


# -- teacher features -------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherFeatures:
    folder: Path
    meta: dict  # model, frozen_layers, hidden_size, rows and token counts per split, frozen_sha256, ...

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(hidden states of every token of the split, memory-mapped; row offsets)."""
        return (np.load(self.folder / f"{name}.npy", mmap_mode="r"),
                np.load(self.folder / f"{name}.offsets.npy"))


def write_feature_split(out: Path, split: str, rows: Sequence[np.ndarray]) -> dict:
    """One split's hidden states, row after row, as float16; returns its counts."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hidden = rows[0].shape[1] if len(rows) else 0
    values = np.lib.format.open_memmap(out / f"{split}.npy", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), hidden))
    for i, row in enumerate(rows):
        values[offsets[i]:offsets[i + 1]] = row
    values.flush()
    del values
    np.save(out / f"{split}.offsets.npy", offsets)
    return {"rows": int(len(rows)), "tokens": int(offsets[-1])}


def write_features_meta(out: Path, meta: dict) -> None:
    (out / "features.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def open_features(folder: Path) -> TeacherFeatures:
    return TeacherFeatures(folder, json.loads((folder / "features.json").read_text()))


# -- models -----------------------------------------------------------------------------
def model_folder(artifact: Path) -> Path:
    return artifact / "model"


def onnx_file(artifact: Path) -> Path:
    return artifact / "model.onnx"


def read_evaluation(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def read_findings(folder: Path) -> list[dict]:
    """The findings of a data-checks or data-comparison artifact."""
    for name in ("checks.json", "comparison.json"):
        if (folder / name).exists():
            return json.loads((folder / name).read_text())["findings"]
    raise FileNotFoundError(f"{folder} holds neither checks.json nor comparison.json")


def read_judgement(folder: Path) -> dict:
    return json.loads((folder / "judgement.json").read_text())
