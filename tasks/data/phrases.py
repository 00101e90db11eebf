"""Phrase-tree data sets: which texts are whole sentences, and which phrases belong to which.

SST-2's train split is every phrase of the parse trees of about 6,900 review sentences
(67,349 texts, 7 words at the median), while its dev split is whole sentences (19 words
at the median). Two things follow, and both need to know the sentences:

- a validation split of random train rows shares text with train (the sub-phrases of a
  held-out sentence stay in train, labelled), so it measures memory, not sentence-level
  skill: on it the SST-2 student scored 93% on the held-out rows that are sentences,
  against 88% on dev (`sentence_holdout` holds out whole trees instead);
- augmenting every phrase gives phrase-length variants (`augment_data` with
  `source: sentences` perturbs only the sentences).

A text is a whole sentence when it is not a run of words inside another text. Texts are
compared as word sequences (split on whitespace), so "art" is not inside "heart".
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

Words = tuple[str, ...]


def _spans(words: Words, lengths: Sequence[int]) -> Iterable[Words]:
    """Every run of `n` consecutive words, for each n in the sorted `lengths` up to len(words)."""
    for n in lengths:
        if n > len(words):
            break
        yield from (words[a:a + n] for a in range(len(words) - n + 1))


def _words_and_lengths(texts: Sequence[str]) -> tuple[list[Words], list[int]]:
    """Each text as its words, and the sorted distinct word counts (the run lengths worth storing)."""
    words = [tuple(text.split()) for text in texts]
    return words, sorted({len(w) for w in words})


def _full_sentences(words: Sequence[Words], lengths: Sequence[int]) -> list[int]:
    inside: set[Words] = set()
    kept: list[int] = []
    for index in sorted(range(len(words)), key=lambda i: -len(words[i])):
        if words[index] in inside:
            continue
        kept.append(index)
        inside.update(_spans(words[index], lengths))
    return sorted(kept)


def full_sentences(texts: Sequence[str]) -> list[int]:
    """Indices of the texts that are not a run of words inside another text, in text order.

    Longest first, every word run of a kept text goes into a set, so a shorter text is
    inside another exactly when it is in that set; a repeated text is kept once. Only
    runs as long as some text are stored, which bounds the set by the kept texts' words
    times the number of distinct text lengths.
    """
    return _full_sentences(*_words_and_lengths(texts))


def sentence_holdout(texts: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(validation rows, train rows) of a phrase-tree train split, holding out whole trees.

    A seeded `fraction` of the whole sentences is validation. Train keeps every other row
    that a remaining sentence contains, so a phrase shared with a train sentence ("the
    film") stays, and the phrases only held-out sentences contain are used by neither:
    validation shares no text with train and, like a sentence-level test split, holds
    only sentences.
    """
    # Finding the sentences and covering train both need every text as words: split once.
    words, lengths = _words_and_lengths(texts)
    sentences = _full_sentences(words, lengths)
    order = np.random.default_rng(seed).permutation(len(sentences))
    cut = max(1, int(round(len(sentences) * fraction)))
    held = sorted(sentences[i] for i in order[:cut])
    covered: set[Words] = set()
    for index in sorted(set(sentences) - set(held)):
        covered.update(_spans(words[index], lengths))
    held_set = set(held)
    train = [i for i in range(len(texts)) if i not in held_set and words[i] in covered]
    return held, train


Span = tuple[int, int]  # word positions [start, end) of a phrase inside a text


def constituents(texts: Sequence[str], indices: Sequence[int], min_words: int = 2) -> dict[int, list[Span]]:
    """For each text in `indices`, the runs of its words that are other texts of `texts`.

    In a phrase-tree data set those are the sentence's labelled constituents ("the plot
    is thin" inside "the acting is superb but the plot is thin"), the units a
    substitution can swap without breaking the sentence. Runs shorter than `min_words`
    (single words) and the whole text are left out. Texts without any are absent.
    """
    words, lengths = _words_and_lengths(texts)
    known = set(words)
    found: dict[int, list[Span]] = {}
    for index in indices:
        text = words[index]
        spans = [(a, a + n) for n in lengths if min_words <= n < len(text)
                 for a in range(len(text) - n + 1) if text[a:a + n] in known]
        if spans:
            found[index] = spans
    return found
