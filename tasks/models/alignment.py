"""Whether a teacher's and a student's tokens line up position by position.

Layer-to-layer distillation compares the teacher's hidden states and attention at
position i with the student's at position i, so it is only sound where both
tokenizers cut a text into the same pieces. Two tokenizers can do that with different
ids: all-mpnet-base-v2's ids are all-MiniLM-L6-v2's (BERT's) shifted by 4, with
`<s> <pad> </s> <unk> <mask>` where BERT has `[CLS] [PAD] [SEP] [UNK] [MASK]`.

So ids are compared through their pieces: every student id is mapped to the teacher id
of the same piece (special tokens by their role: cls, sep, pad, unk, mask), and a row is
aligned when the student's ids, mapped, are the teacher's ids of the same text. Two
checks use it:
- `vocabulary_alignment`, before any work: the share of the student's pieces the
  teacher's vocabulary holds (different tokenizers share few; MPNet and MiniLM all);
- `aligned_rows`, in `distil_student`: row by row over the texts it trains on; the
  layer losses use the aligned rows only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SPECIAL_ROLES = ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token")
# Below this share of the student's pieces in the teacher's vocabulary, the tokenizers
# cut text differently and position i of one is not position i of the other.
LEAST_SHARED_VOCABULARY = 0.99


def piece_names(tokenizer) -> list[str]:
    """The piece of every id; special tokens by role (`<cls_token>`), so `[CLS]` and `<s>` meet."""
    names = [str(name) for name in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    for role in SPECIAL_ROLES:
        token = getattr(tokenizer, role, None)
        if token is not None:
            token_id = tokenizer.convert_tokens_to_ids(token)
            names[token_id] = f"<{role}>"
    return names


def student_to_teacher_ids(teacher_pieces: Sequence[str], student_pieces: Sequence[str]) -> np.ndarray:
    """For every student id, the teacher id of the same piece, or -1 where the teacher has none."""
    teacher_id = {}
    for index, piece in enumerate(teacher_pieces):
        teacher_id.setdefault(piece, index)
    return np.array([teacher_id.get(piece, -1) for piece in student_pieces], dtype=np.int64)


def vocabulary_alignment(teacher_tokenizer, student_tokenizer) -> dict:
    """How much of the student's vocabulary the teacher's holds, and whether that is enough."""
    teacher_pieces = piece_names(teacher_tokenizer)
    mapping = student_to_teacher_ids(teacher_pieces, piece_names(student_tokenizer))
    shared = float((mapping >= 0).mean())
    same_ids = bool(len(teacher_pieces) == len(mapping) and np.array_equal(mapping, np.arange(len(mapping))))
    return {"shared_share": round(shared, 5), "student_vocabulary": len(mapping), "same_ids": same_ids,
            "aligned": shared >= LEAST_SHARED_VOCABULARY}


def aligned_rows(teacher_ids: Sequence[np.ndarray], student_ids: Sequence[np.ndarray], mapping: np.ndarray) -> np.ndarray:
    """True where the student's row, mapped to teacher ids, is the teacher's row."""
    if len(teacher_ids) != len(student_ids):
        raise ValueError(f"{len(teacher_ids)} teacher rows against {len(student_ids)} student rows: not the same texts")
    return np.array([len(t) == len(s) and bool(np.array_equal(mapping[s], t)) for t, s in zip(teacher_ids, student_ids)],
                    dtype=bool)
