"""Stage `tokenize`: one model's token ids for every split, truncated, unpadded.

The pipeline runs it once per tokenizer: the teacher's, and the student's when it
differs (one artifact when they are the same). Sequences are stored at their real
length in dataset row order; batches are padded later with the pad id recorded
here. The artifact describes itself (tokens.json: tokenizer source, max length, pad
id, special tokens, and the digest of each split's texts) and carries the tokenizer,
so every later stage, the exported model and `predict` encode exactly as it did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.data.encoding import encoder_for
from tasks.formats import SPLITS, TOKENS, read_dataset, sha256_texts, write_token_spec, write_token_split
from tasks.models.loading import PACKAGED


class TokenizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokenizer: str = Field(PACKAGED, description="tokenizer source; the pipeline sets it from the teacher and the student init")
    max_length: int = Field(64, ge=8, le=512, description="truncate sequences to this many tokens, special tokens included")


def build_tokens(params: TokenizeParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    splits, _ = read_dataset(inputs["dataset"])
    encoder = encoder_for(params.tokenizer, params.max_length)
    stats, texts_sha256 = {}, {}
    for split in SPLITS:
        frame = splits[split]
        texts = frame["text"].tolist()
        encoded = encoder.encode(texts)
        write_token_split(out, split, encoded, frame["label"].to_numpy())
        lengths = np.array([len(ids) for ids in encoded])
        texts_sha256[split] = sha256_texts(texts)
        stats[split] = {
            "rows": len(frame),
            "mean_tokens": round(float(lengths.mean()), 2),
            "p95_tokens": int(np.percentile(lengths, 95)),
            "truncated": int((encoder.untruncated_lengths(texts) > params.max_length).sum()),
        }
    encoder.save(out / "tokenizer")
    write_token_spec(out, encoder.spec(texts_sha256))
    (out / "labels.json").write_bytes((inputs["dataset"] / "labels.json").read_bytes())
    progress.info(f"tokenize ({params.tokenizer}): " + ", ".join(f"{s} mean {v['mean_tokens']} tokens" for s, v in stats.items()))
    return {**stats, "pad_id": encoder.pad_id}


STAGE = Stage(
    name="tokenize",
    writes=TOKENS,
    params=TokenizeParams,
    inputs=("dataset",),
    build=build_tokens,
    libraries=("tokenizers", "transformers"),
)
