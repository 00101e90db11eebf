"""Text to token ids: the one encoding function of the project.

`tokenize` (every split), `soft_labels` and `distil_student` (augmented texts) and
`predict` (new text) all call `Encoder.encode`, so the ids a model sees in use are
the ids it was trained on: same tokenizer, same truncation, same special tokens.
Sequences stay unpadded; batches are padded later with the tokenizer's own pad id
(`Encoder.pad_id`, recorded in the tokens artifact), never a hard-coded one: MPNet
pads with 1, and derives position ids from where the padding is.

Augmented texts mark masked words with `MASK_PLACEHOLDER`; each tokenizer reads it
as its own mask token ([MASK] for BERT, <mask> for MPNet).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tasks.formats import TokenSpec, Tokens

MASK_PLACEHOLDER = "[MASK]"


class Encoder:
    def __init__(self, tokenizer, max_length: int, source: str):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.source = source

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def mask_token(self) -> str | None:
        return self.tokenizer.mask_token

    def _prepared(self, texts: Sequence[str]) -> list[str]:
        mask = self.mask_token
        if mask is None or mask == MASK_PLACEHOLDER:
            return list(texts)
        return [text.replace(MASK_PLACEHOLDER, mask) for text in texts]

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text, special tokens included, truncated to max_length, unpadded."""
        if not texts:
            return []
        ids = self.tokenizer(self._prepared(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [np.asarray(row, dtype=np.int64) for row in ids]

    def untruncated_lengths(self, texts: Sequence[str]) -> np.ndarray:
        ids = self.tokenizer(self._prepared(texts), truncation=False)["input_ids"]
        return np.array([len(row) for row in ids])

    def spec(self, texts_sha256: dict[str, str]) -> TokenSpec:
        t = self.tokenizer
        return TokenSpec(
            tokenizer=self.source, max_length=self.max_length, pad_id=self.pad_id, mask_token=self.mask_token,
            special_tokens={name: str(getattr(t, name)) for name in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token")
                            if getattr(t, name, None) is not None},
            vocab_size=len(t), texts_sha256=texts_sha256,
        )

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(folder)


def encoder_for(source: str, max_length: int) -> Encoder:
    """The encoder of a model source ('minilm', 'tiny', 'tiny-mpnet', a folder, a Hub id)."""
    from tasks.models.loading import load_tokenizer

    return Encoder(load_tokenizer(source), max_length, source)


def encoder_of(tokens: Tokens) -> Encoder:
    """The encoder a tokens artifact was made with, from the tokenizer stored inside it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokens.tokenizer_folder, trust_remote_code=False)
    return Encoder(tokenizer, tokens.spec.max_length, tokens.spec.tokenizer)
