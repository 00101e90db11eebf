"""Stage `augment_data`: extra training text for distillation, as text any tokenizer reads.

A student learns the teacher's function only where it sees the teacher's outputs.
Tang et al. (2019, "Distilling Task-Specific Knowledge from BERT into Simple Neural
Networks") widen that set with perturbed copies of the training sentences, labelled
by the teacher, and Intel's BERT-Mini article credits most of its gain to the same
trick. Each copy applies, word by word (a word is a run of non-space characters):

- masking: the word becomes `MASK_PLACEHOLDER`, which each tokenizer reads as its
  own mask token ([MASK] for BERT, <mask> for MPNet), with probability `mask_probability`;
- neighbour replacement: a word of the neighbour table becomes one of its
  `neighbours` nearest words, with probability `neighbour_probability`;
- n-gram sampling: with probability `ngram_probability` only a random window of
  1 to `max_ngram` words is kept.

The neighbour table is the packaged all-MiniLM-L6-v2's pretrained input embeddings of
its whole-word vocabulary entries (about 20,000 alphabetic words; cosine similarity),
read straight from the package's safetensors. Not the teacher's embeddings: the
variants must not depend on which teacher (or tokenizer) is used, so one augmented
set serves every teacher and student, and a teacher change does not redo it. The
paper picks words of the same part of speech; offline we have no tagger, and these
neighbours are mostly inflections and synonyms (happy: glad, pleased, delighted),
sometimes antonyms (good: bad); that is harmless, because the teacher labels every
variant afresh in `soft_labels`.

`source: sentences` perturbs only the training texts no other training text contains
(tasks/data/phrases.py). SST-2's train split is mostly sub-phrases of its sentences, so the
variants of every phrase stay phrase-length, while dev is whole sentences; variants of
the sentences alone (with `ngram_probability: 0`, so they keep their length) give the
student sentence-length supervision. On data without sub-phrases (emotion's tweets)
nearly every text is a sentence.

`substitute_probability` swaps, before the word-level changes, one constituent of a
text (a run of its words that is itself a training text, tasks/data/phrases.py) for the
constituent of another text with about as many words ("the plot is thin" becomes "the
score soars"): new sentences whose sentiment the teacher has to work out from their
parts, in the spirit of Shi et al.'s (2021) substructure substitution. Only phrase-tree
data has constituents; texts without any are left as they are.

Variants equal to a training sentence or to each other are dropped. `copies: 0`
(the default) writes an empty set and loads nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from artifacts.stage import Progress, Stage
from tasks.data.encoding import MASK_PLACEHOLDER
from tasks.formats import AUGMENTED, read_texts, write_augmented
from tasks.models.loading import packaged_minilm_path
from tasks.data.phrases import Span, constituents, full_sentences


class AugmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    copies: int = Field(0, ge=0, le=50, description="perturbed variants tried per training sentence (Tang et al. use 20); 0: no augmentation")
    mask_probability: float = Field(0.1, ge=0, le=1, description="chance that a word is masked")
    neighbour_probability: float = Field(0.1, ge=0, le=1, description="chance that a word becomes one of its nearest words")
    ngram_probability: float = Field(0.25, ge=0, le=1, description="chance that a variant keeps only a random window of words")
    max_ngram: int = Field(5, ge=1, le=64, description="longest window of words n-gram sampling keeps")
    neighbours: int = Field(10, ge=1, le=100, description="nearest words (packaged MiniLM input embeddings, cosine) a word may become")
    substitute_probability: float = Field(
        0.0, ge=0, le=1, description="chance that a variant swaps one of the text's constituents for another text's of about its length")
    source: Literal["every", "sentences"] = Field(
        "every", description="which training texts get variants: every one, or only the full sentences (no other training text contains them)")
    min_texts: int = Field(0, ge=0, le=5_000_000, description="least texts in the distillation set (training texts and variants): a smaller data set gets more variants per text, up to max_copies; 0: copies decides")
    max_copies: int = Field(8, ge=0, le=50, description="most variants per text that min_texts may ask for")
    seed: int = Field(0, description="seed for the perturbations")


def copies_for(params: AugmentParams, training_texts: int) -> int:
    """Variants tried per text: `copies`, raised towards `min_texts` in all, at most `max_copies`."""
    if not params.min_texts or not training_texts:
        return params.copies
    wanted = -(-params.min_texts // training_texts) - 1  # ceil(min_texts / rows) - 1 variants per text
    return max(params.copies, min(params.max_copies, wanted))


def word_table() -> tuple[list[str], np.ndarray]:
    """The alphabetic whole words of MiniLM's vocabulary and their unit-length input embeddings."""
    from safetensors import safe_open

    folder = packaged_minilm_path()
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    keep = [i for i, token in enumerate(vocab) if token.isalpha() and token.isascii() and len(token) > 1]
    with safe_open(str(folder / "model.safetensors"), "np") as weights:
        table = weights.get_tensor("embeddings.word_embeddings.weight")[keep].astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True) + 1e-12
    return [vocab[i] for i in keep], table


def nearest_words(words: Sequence[str], table: np.ndarray, wanted: Sequence[str], k: int) -> dict[str, list[str]]:
    """For each wanted word in the table, its k most cosine-similar other words."""
    index = {word: i for i, word in enumerate(words)}
    rows = np.array([index[w] for w in wanted if w in index], dtype=np.int64)
    found: dict[str, list[str]] = {}
    for chunk in np.array_split(rows, max(1, len(rows) // 2048)):
        if not len(chunk):
            continue
        similarity = table[chunk] @ table.T
        similarity[np.arange(len(chunk)), chunk] = -2.0  # never itself
        top = np.argpartition(-similarity, k, axis=1)[:, :k]
        order = np.take_along_axis(similarity, top, axis=1).argsort(axis=1)[:, ::-1]
        for row, picks in zip(chunk, np.take_along_axis(top, order, axis=1)):
            found[words[row]] = [words[j] for j in picks]
    return found


def perturb(words: list[str], params: AugmentParams, neighbours: Mapping[str, list[str]], rng: np.random.Generator) -> list[str]:
    """One variant of a sentence's words: words masked, replaced or cut to an n-gram."""
    out: list[str] = []
    for word in words:
        draw = rng.random()
        if draw < params.mask_probability:
            out.append(MASK_PLACEHOLDER)
        elif draw < params.mask_probability + params.neighbour_probability and word.lower() in neighbours:
            out.append(str(rng.choice(neighbours[word.lower()])))
        else:
            out.append(word)
    if len(out) > 1 and rng.random() < params.ngram_probability:
        n = int(rng.integers(1, min(params.max_ngram, len(out)) + 1))
        start = int(rng.integers(0, len(out) - n + 1))
        out = out[start:start + n]
    return out


class Substitutions:
    """The constituents of the perturbed texts, and a pool of them by word count to swap in."""

    SLACK = 2  # a swapped-in constituent has the replaced one's word count, give or take this

    def __init__(self, texts: Sequence[str], indices: Sequence[int]):
        self.spans = constituents(texts, indices)
        pool: dict[int, set[str]] = {}
        for index, spans in self.spans.items():
            split = texts[index].split()
            for a, b in spans:
                pool.setdefault(b - a, set()).add(" ".join(split[a:b]))
        self.by_length = {n: sorted(phrases) for n, phrases in pool.items()}  # sorted: the same draws every run

    def swap(self, index: int, words: list[str], rng: np.random.Generator) -> list[str]:
        """`words` (text `index`) with one constituent replaced by another of similar length."""
        spans: list[Span] = self.spans.get(index, [])
        if not spans:
            return words
        a, b = spans[int(rng.integers(len(spans)))]
        current = " ".join(words[a:b])
        options = [p for n in range(b - a - self.SLACK, b - a + self.SLACK + 1)
                   for p in self.by_length.get(n, ()) if p != current]
        if not options:
            return words
        return words[:a] + options[int(rng.integers(len(options)))].split() + words[b:]


def build_augmented(params: AugmentParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    train = read_texts(inputs["dataset"], "train") if params.copies or params.min_texts else []
    copies = copies_for(params, len(train))
    if copies == 0:
        write_augmented(out, [], [])
        return {"rows": 0}
    words, table = word_table()
    used = sorted({w.lower() for text in train for w in text.split()})
    neighbours = nearest_words(words, table, used, params.neighbours)

    perturbed = full_sentences(train) if params.source == "sentences" else range(len(train))
    # Built only when asked for, and drawn from only then: sets made without substitution
    # stay byte for byte what they were, and so do the soft labels computed from them.
    substitutions = Substitutions(train, perturbed) if params.substitute_probability > 0 else None
    rng = np.random.default_rng(params.seed)
    seen = set(train)
    variants: list[str] = []
    sources: list[int] = []
    for index in perturbed:
        split = train[index].split()
        for _ in range(copies):
            words = split
            if substitutions is not None and rng.random() < params.substitute_probability:
                words = substitutions.swap(index, split, rng)
            variant = " ".join(perturb(words, params, neighbours, rng))
            if variant and variant not in seen:
                seen.add(variant)
                variants.append(variant)
                sources.append(index)
    write_augmented(out, variants, sources)
    stats = {
        "rows": len(variants),
        "tried": len(perturbed) * copies,
        "duplicates_dropped": len(perturbed) * copies - len(variants),
        "mean_words": round(float(np.mean([len(v.split()) for v in variants])), 2) if variants else 0.0,
        "words_with_neighbours": len(neighbours),
    }
    # augment.json keeps the keys it had before `source` existed: it is part of the artifact's
    # content, and a new key would change every stored augmented set and so every soft-label
    # set computed from one (an hour of teacher inference for SST-2). The manifest says more.
    (out / "augment.json").write_text(json.dumps(stats, indent=2))
    progress.info(f"augment_data: {len(variants)} new variants of {len(perturbed)} of the {len(train)} training texts")
    extra = {"texts_with_constituents": len(substitutions.spans)} if substitutions is not None else {}
    return {**stats, "perturbed_texts": len(perturbed), "copies": copies, **extra}


STAGE = Stage(
    name="augment_data",
    writes=AUGMENTED,
    params=AugmentParams,
    inputs=("dataset",),
    build=build_augmented,
    libraries=("safetensors",),
)
