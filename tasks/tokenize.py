"""Stage `tokenize`: WordPiece ids for every split, truncated, unpadded.

Sequences are stored at their real length; batches are padded later, per batch
(see tasks/batching.py). The tokenizer travels inside the artifact, so every later
stage and the exported model use exactly the vocabulary the ids were made with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.data import SPLITS, read_dataset
from tasks.models import PACKAGED, load_tokenizer


class TokenizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokenizer: str = Field(PACKAGED, description="tokenizer source; the pipeline sets it to the teacher's model")
    max_length: int = Field(64, ge=8, le=512, description="truncate sequences to this many tokens, [CLS] and [SEP] included")


def build_tokens(params: TokenizeParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    splits, names = read_dataset(inputs["dataset"])
    tokenizer = load_tokenizer(params.tokenizer)
    stats = {}
    for split in SPLITS:
        frame = splits[split]
        encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=params.max_length)["input_ids"]
        full = tokenizer(frame["text"].tolist(), truncation=False)["input_ids"]
        lengths = np.array([len(ids) for ids in encoded])
        table = pa.table({
            "input_ids": pa.array(encoded, type=pa.list_(pa.int32())),
            "label": pa.array(frame["label"].to_numpy(), type=pa.int64()),
        })
        pq.write_table(table, out / f"{split}.parquet")
        stats[split] = {
            "rows": len(frame),
            "mean_tokens": round(float(lengths.mean()), 2),
            "p95_tokens": int(np.percentile(lengths, 95)),
            "truncated": int(sum(len(ids) > params.max_length for ids in full)),
        }
    tokenizer.save_pretrained(out / "tokenizer")
    (out / "labels.json").write_bytes((inputs["dataset"] / "labels.json").read_bytes())
    progress.info("tokenize: " + ", ".join(f"{s} mean {v['mean_tokens']} tokens" for s, v in stats.items()))
    return stats


def read_tokens(folder: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    table = pq.read_table(folder / f"{split}.parquet")
    ids = [np.asarray(row, dtype=np.int64) for row in table.column("input_ids").to_pylist()]
    return ids, np.array(table.column("label").to_numpy(), dtype=np.int64)  # writable copy


STAGE = Stage(
    name="tokenize",
    kind="tokens",
    params=TokenizeParams,
    inputs=("dataset",),
    build=build_tokens,
    libraries=("tokenizers", "transformers"),
)
