"""Labels: a split's label column as class ids of one label set, and the checks on it.

The label set is given (a preset's, or --data-label-names) or read off the training
split; ids are refused where they would silently shift (gaps in numeric labels), and
values outside the set, empty or non-text rows, and training splits a classifier
cannot learn from are refused naming the rows and the fix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.errors import DistilleryError


def _as_int(value: object) -> int | None:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def infer_label_names(values: pd.Series, where: str) -> list[str]:
    """The label set of a training split that names none: its distinct values, sorted.

    Numbers sort as numbers (2 before 10) and must run without gaps: 0, 1, 3 is most
    likely a class id lost from the training rows (or a typo), and guessing would
    shift every id after it, so it is refused naming the missing ids.
    """
    distinct = list(values.unique())
    numbers = [_as_int(v) for v in distinct]
    if not all(n is not None for n in numbers):
        return sorted({_label_key(v) for v in distinct})
    numbers = sorted(set(numbers))
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DistilleryError(
            f"the labels of {where} look like class ids ({', '.join(map(str, numbers[:10]))}{' ...' if len(numbers) > 10 else ''}) "
            f"but {shown} {'is' if len(missing) == 1 else 'are'} missing from the training rows: renumber the labels "
            f"{numbers[0]}..{numbers[0] + len(numbers) - 1} without gaps, or give the label set in id order with "
            f"--data-label-names (one name per id from 0, a class may then have no training rows)"
        )
    return [str(n) for n in numbers]


def _label_key(value: object) -> str:
    """A label as text, so 3 from a parquet file and "3" from a CSV file name the same class."""
    return value.strip() if isinstance(value, str) else str(value)


def label_ids(values: pd.Series, names: list[str], where: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    # A number is a class id only when no label is itself a number: with labels 1..5
    # (stars, say) a 0 is a value outside the set, not the id of "1".
    numbers_are_ids = not any(_as_int(name) is not None for name in names)
    ids = np.empty(len(values), dtype=np.int64)
    bad: dict[str, int] = {}
    for row, value in enumerate(values):
        label = index.get(_label_key(value))
        if label is None and numbers_are_ids:
            number = _as_int(value)
            label = number if number is not None and 0 <= number < len(names) else None
        if label is None:
            bad.setdefault(repr(value), row + 1)
            continue
        ids[row] = label
    if bad:
        shown = ", ".join(f"{v} (row {r})" for v, r in list(bad.items())[:5])
        raise DistilleryError(
            f"labels outside the label set {names} in {where}: {shown}; fix those rows, "
            f"or pass the full label set with --data-label-names"
        )
    return ids


def normalise_split(frame: pd.DataFrame, text_col: str, label_col: str, names: list[str], where: str) -> pd.DataFrame:
    if len(frame) == 0:
        raise DistilleryError(f"{where} is empty: it needs at least one labelled row")
    texts = frame[text_col].map(lambda v: v.strip() if isinstance(v, str) else v)
    not_text = [i + 1 for i, v in enumerate(texts) if not isinstance(v, str)]
    if not_text:
        raise DistilleryError(f"{where} has non-text values in column {text_col!r} at rows {not_text[:5]}; fix or remove them")
    empty = [i + 1 for i, v in enumerate(texts) if not v]
    if empty:
        raise DistilleryError(
            f"{where} has {len(empty)} empty text(s), at rows {empty[:5]}{' ...' if len(empty) > 5 else ''}; "
            f"remove those rows or fill in their text"
        )
    return pd.DataFrame({"text": texts.astype(str).to_numpy(), "label": label_ids(frame[label_col], names, where)})


MIN_TRAINING_ROWS = 2


def check_classes(labels: pd.Series, names: list[str], inferred: bool, where: str, column: str) -> None:
    """A training split a classifier can learn from: two classes at least, and, for a label
    set read off the data, every class at least MIN_TRAINING_ROWS rows (a value seen once
    is more often a typo than a class, and the held-out validation split may take it).
    A given label set is trusted: a slice of a preset's data may lack one of its classes.
    """
    counts = np.bincount(labels.to_numpy(), minlength=len(names))
    present = [names[i] for i, n in enumerate(counts) if n > 0]
    if len(present) < 2:
        found = f"only {present[0]!r} ({int(counts.max())} rows)" if present else "no labelled rows"
        raise DistilleryError(
            f"the training rows of {where} hold {found} in label column {column!r}: a classifier needs at least two "
            f"classes; add rows of the other classes, or name the right column with --data-label-column"
        )
    rare = [(names[i], int(n)) for i, n in enumerate(counts) if n < MIN_TRAINING_ROWS] if inferred else []
    if rare:
        shown = ", ".join(f"{name!r} ({n} row{'s' if n != 1 else ''})" for name, n in rare[:10])
        raise DistilleryError(
            f"{len(rare)} class(es) of {where} have fewer than {MIN_TRAINING_ROWS} training rows: {shown}; add training "
            f"rows of {'it' if len(rare) == 1 else 'them'}, fix the label if it is a typo, or merge or drop the class "
            f"in every split"
        )
