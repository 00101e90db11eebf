"""Stage `augment_data`: extra, teacher-labelled training text for distillation.

A student learns the teacher's function only where it sees the teacher's outputs.
Tang et al. (2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural
Networks") widen that set with perturbed copies of the training sentences, labelled
by the teacher, and Intel's BERT-Mini article credits most of its gain to the same
trick. Each copy applies, word by word (a word is a head WordPiece and its "##"
continuations, so words are never split):

- masking: the word becomes one [MASK] token, with probability `mask_probability`;
- vocabulary-neighbour replacement: a one-piece word becomes one of its `neighbours`
  nearest whole words, with probability `neighbour_probability`. The paper picks
  words of the same part of speech; offline we have no tagger, so "near" is the
  cosine similarity of the fine-tuned teacher's input embeddings. For MiniLM these
  are mostly inflections and synonyms (happy: happier, pleased, glad, delighted),
  sometimes antonyms (good: bad); that is harmless, because the teacher labels
  every variant afresh;
- n-gram sampling: with probability `ngram_probability` only a random window of
  1 to `max_ngram` words is kept.

Variants equal to a training sentence or to each other are dropped. The teacher's
logits for every variant are stored with it, so distillation never runs the
teacher on them again. `copies: 0` (the default) writes an empty set without
loading the teacher, so the stage costs nothing when augmentation is off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.models import load_tokenizer, load_trained
from tasks.tokenize import read_tokens
from tasks.training import predict_logits

AUGMENTED_FILE = "augmented.parquet"


class AugmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    copies: int = Field(0, ge=0, le=50, description="perturbed variants tried per training sentence (Tang et al. use 20); 0: no augmentation")
    mask_probability: float = Field(0.1, ge=0, le=1, description="chance that a word becomes [MASK]")
    neighbour_probability: float = Field(0.1, ge=0, le=1, description="chance that a one-piece word becomes one of its nearest whole words")
    ngram_probability: float = Field(0.25, ge=0, le=1, description="chance that a variant keeps only a random window of words")
    max_ngram: int = Field(5, ge=1, le=64, description="longest window of words n-gram sampling keeps")
    neighbours: int = Field(10, ge=1, le=100, description="nearest whole words (teacher input embeddings, cosine) a word may become")
    seed: int = Field(0, description="seed for the perturbations")


def words_of(ids: np.ndarray, continuation: np.ndarray) -> list[list[int]]:
    """The ids between [CLS] and [SEP], grouped into words (a head piece and its ## pieces)."""
    words: list[list[int]] = []
    for token in ids[1:-1].tolist():
        if continuation[token] and words:
            words[-1].append(token)
        else:
            words.append([token])
    return words


def perturb(
    ids: np.ndarray,
    params: AugmentParams,
    continuation: np.ndarray,
    neighbours: Mapping[int, np.ndarray],
    mask_id: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One variant of `ids` ([CLS] ... [SEP]): words masked, replaced or cut to an n-gram."""
    words = words_of(ids, continuation)
    out: list[list[int]] = []
    for word in words:
        draw = rng.random()
        if draw < params.mask_probability:
            out.append([mask_id])
        elif draw < params.mask_probability + params.neighbour_probability and len(word) == 1 and word[0] in neighbours:
            out.append([int(rng.choice(neighbours[word[0]]))])
        else:
            out.append(word)
    if len(out) > 1 and rng.random() < params.ngram_probability:
        n = int(rng.integers(1, min(params.max_ngram, len(out)) + 1))
        start = int(rng.integers(0, len(out) - n + 1))
        out = out[start:start + n]
    return np.array([ids[0], *(t for word in out for t in word), ids[-1]], dtype=np.int64)


def whole_words(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per vocabulary id: is it a "##" continuation; and the ids of alphabetic whole words."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    continuation = np.array([token.startswith("##") for token in vocab])
    special = set(tokenizer.all_special_ids)
    candidates = np.array([i for i, token in enumerate(vocab)
                           if token.isalpha() and i not in special and not token.startswith("[")], dtype=np.int64)
    return continuation, candidates


def nearest_words(embeddings: torch.Tensor, words: np.ndarray, candidates: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """For each id in `words`, its k most cosine-similar ids among `candidates` (itself excluded)."""
    table = torch.nn.functional.normalize(embeddings.detach().float(), dim=1)
    pool = table[torch.from_numpy(candidates)]
    found: dict[int, np.ndarray] = {}
    for chunk in np.array_split(words, max(1, len(words) // 2048)):
        if not len(chunk):
            continue
        similarity = table[torch.from_numpy(chunk)] @ pool.T
        similarity[torch.from_numpy(chunk)[:, None] == torch.from_numpy(candidates)[None, :]] = -2.0
        top = similarity.topk(k, dim=1).indices.numpy()
        found.update({int(word): candidates[row] for word, row in zip(chunk, top)})
    return found


def write_augmented(out: Path, sequences: Sequence[np.ndarray], sources: Sequence[int], logits: np.ndarray) -> None:
    pq.write_table(pa.table({
        "input_ids": pa.array([s.tolist() for s in sequences], type=pa.list_(pa.int32())),
        "source": pa.array(list(sources), type=pa.int64()),
        "teacher_logits": pa.array(logits.tolist(), type=pa.list_(pa.float32())),
    }), out / AUGMENTED_FILE)


def read_augmented(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The variants' ids and the teacher's logits for them (an empty set when augmentation is off)."""
    table = pq.read_table(folder / AUGMENTED_FILE)
    ids = [np.asarray(row, dtype=np.int64) for row in table.column("input_ids").to_pylist()]
    logits = np.array(table.column("teacher_logits").to_pylist(), dtype=np.float32)
    return ids, logits


def build_augmented(params: AugmentParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    if params.copies == 0:
        write_augmented(out, [], [], np.zeros((0, 0), dtype=np.float32))
        return {"rows": 0}
    tokens = inputs["tokens"]
    train_ids, train_labels = read_tokens(tokens, "train")
    tokenizer = load_tokenizer(str(tokens / "tokenizer"))
    teacher = load_trained(inputs["teacher"] / "model")
    continuation, candidates = whole_words(tokenizer)
    used = np.unique(np.concatenate(train_ids))
    used = used[np.isin(used, candidates)]
    neighbours = nearest_words(teacher.get_input_embeddings().weight, used, candidates, params.neighbours)

    rng = np.random.default_rng(params.seed)
    seen = {tuple(ids.tolist()) for ids in train_ids}
    variants: list[np.ndarray] = []
    sources: list[int] = []
    for index, ids in enumerate(train_ids):
        for _ in range(params.copies):
            variant = perturb(ids, params, continuation, neighbours, tokenizer.mask_token_id, rng)
            key = tuple(variant.tolist())
            if key not in seen:
                seen.add(key)
                variants.append(variant)
                sources.append(index)
    progress.info(f"augment_data: {len(variants)} new variants of {len(train_ids)} sentences; teacher labelling")

    chunks = np.array_split(np.arange(len(variants)), max(1, len(variants) // 4096))
    logits = np.zeros((len(variants), teacher.config.num_labels), dtype=np.float32)
    for done, chunk in enumerate(chunks, start=1):
        logits[chunk] = predict_logits(teacher, [variants[i] for i in chunk])
        progress.step("augment_data", done, len(chunks))
    write_augmented(out, variants, sources, logits)

    flipped = float((logits.argmax(1) != train_labels[np.asarray(sources, dtype=np.int64)]).mean()) if variants else 0.0
    stats = {
        "rows": len(variants),
        "tried": len(train_ids) * params.copies,
        "duplicates_dropped": len(train_ids) * params.copies - len(variants),
        "mean_tokens": round(float(np.mean([len(v) for v in variants])), 2) if variants else 0.0,
        "words_with_neighbours": len(neighbours),
        # How often the teacher's label for a variant differs from its source's gold label:
        # the share of "new" supervision the augmentation brings (and of noise, if too high).
        "teacher_label_differs_from_source": round(flipped, 4),
    }
    (out / "augment.json").write_text(json.dumps(stats, indent=2))
    return stats


STAGE = Stage(
    name="augment_data",
    kind="augmented-tokens",
    params=AugmentParams,
    inputs=("tokens", "teacher"),
    build=build_augmented,
    libraries=("torch", "transformers"),
)
