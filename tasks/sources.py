"""Reading a labelled text data set from its source into checked, canonical splits.

The helper behind stage `fetch_dataset` (tasks/fetch.py) and the pipeline's preflight.

Sources: a Hugging Face Hub id (e.g. dair-ai/emotion), or a folder (local path or
any fsspec URI) holding one file per split in one of these formats:
  .txt      `text;label` lines (the emotion files; the text is cut at the last ';')
  .tsv      GLUE style, tab separated with a header
  .csv      comma separated with a header
  .jsonl    one JSON object per line
  .parquet
Every problem with the data is reported here, before any model is loaded or
trained, and nothing is published.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Literal, Mapping

import fsspec
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tasks.errors import DistilleryError
from tasks.formats import SPLITS
from tasks.phrases import sentence_holdout

SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}
FORMATS = (".txt", ".tsv", ".csv", ".jsonl", ".parquet")
TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMNS = ("label", "label_name", "labels")
DATA_HINT = "--data PATH (or DISTILLERY_DATA=PATH)"


class DataParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field("dair-ai/emotion", description="Hugging Face Hub data set id, or a folder (path or fsspec URI) with one file per split")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when the source is a Hub id")
    label_names: list[str] | None = Field(None, description="label names in id order; inferred from the data when absent")
    text_column: str | None = Field(None, description="column holding the text (default: text or sentence)")
    label_column: str | None = Field(None, description="column holding the label (default: label, label_name or labels)")
    splits: dict[str, str] | None = Field(None, description="source split for each of train/validation/test: a file name or stem in a folder, a split name on the Hub; e.g. {'train': 'train', 'test': 'dev'} (default: found by name)")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of train held out, seeded, when there is no validation split")
    validation_holdout: Literal["rows", "sentences"] = Field(
        "rows", description="what is held out of train for validation: seeded rows, or, for phrase-tree data such as SST-2 "
                            "(train holds every sub-phrase of its sentences), seeded whole sentences, the phrases only they contain left out")
    seed: int = Field(42, description="seed for the validation split and for slicing")
    max_train_rows: int | None = Field(None, gt=0, description="use a seeded sample of at most this many training rows")
    max_eval_rows: int | None = Field(None, gt=0, description="use a seeded sample of at most this many validation and test rows")


def is_hub_id(source: str) -> bool:
    if "://" in source or source.startswith((".", "/", "~")) or Path(source).expanduser().exists():
        return False
    return True


# -- locating and reading files ---------------------------------------------------------
def _folder(source: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(str(Path(source).expanduser()) if "://" not in source else source)
    if not fs.isdir(root):
        what = "is a file, not a folder" if fs.exists(root) else "does not exist"
        raise DistilleryError(
            f"data path {source!r} {what}: pass a folder holding train/validation/test files "
            f"({', '.join(FORMATS)}) with {DATA_HINT}"
        )
    return fs, root.rstrip("/")


def _matching(available: list[str], wanted: str) -> str | None:
    """The available name equal to `wanted`, else one with the same stem, else an alias of it
    (dev, val, valid and validation name the same split)."""
    for candidates in ([wanted], [wanted.rsplit(".", 1)[0]], *[stems for stems in SPLIT_STEMS.values() if wanted in stems]):
        for name in available:
            if name in candidates or name.rsplit(".", 1)[0] in candidates:
                return name
    return None


def locate_split_files(params: DataParams) -> dict[str, str]:
    """Split name -> file path, for folder sources. Validation may be absent."""
    fs, root = _folder(params.source)
    names = {p.rstrip("/").rsplit("/", 1)[-1]: p for p in fs.ls(root, detail=False)}
    data_files = [n for n in names if Path(n).suffix.lower() in FORMATS]
    found: dict[str, str] = {}
    wanted = params.splits or {split: split for split in SPLITS}
    for split, name in wanted.items():
        if split not in SPLITS:
            raise DistilleryError(f"unknown split {split!r} in --data-splits: use {', '.join(SPLITS)}")
        match = _matching(data_files, name)
        if match is not None:
            found[split] = names[match]
        elif params.splits:
            raise DistilleryError(f"no file {name!r} for the {split} split in {params.source}: found {sorted(names)}; fix --data-splits")
    for split in ("train", "test"):
        if split not in found:
            raise DistilleryError(
                f"no {split} split in {params.source}: expected a file named {split}"
                f"{{{','.join(FORMATS)}}}, or name it with --data-splits '{{\"{split}\": \"FILE\"}}'"
            )
    return found


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DistilleryError(
            f"{path} is not UTF-8 (invalid byte at line {line}): re-encode it as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8"
        ) from None


def _read_semicolon_lines(text: str, path: str) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if ";" not in line:
            raise DistilleryError(f"{path} line {number} has no ';': every line must be 'text;label'")
        rows.append(line.rsplit(";", 1))
    if rows and rows[0][1].strip().lower() in LABEL_COLUMNS and rows[0][0].strip().lower() in TEXT_COLUMNS:
        header, rows = rows[0], rows[1:]
        columns = [header[0].strip().lower(), header[1].strip().lower()]
    else:
        columns = ["text", "label"]
    return pd.DataFrame(rows, columns=columns)


def read_table(fs: fsspec.AbstractFileSystem, path: str) -> pd.DataFrame:
    suffix = Path(path).suffix.lower()
    with fs.open(path, "rb") as handle:
        raw = handle.read()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(io.BytesIO(raw))
        text = _decode(raw, path)
        if suffix == ".txt":
            return _read_semicolon_lines(text, path)
        if suffix == ".tsv":
            return pd.read_csv(io.StringIO(text), sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
        if suffix == ".csv":
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        if suffix == ".jsonl":
            return pd.read_json(io.StringIO(text), lines=True, dtype=False)
    except DistilleryError:
        raise
    except Exception as exc:
        raise DistilleryError(f"cannot parse {path} as {suffix}: {str(exc).splitlines()[0][:200]}; fix the file or convert it") from None
    raise DistilleryError(f"unsupported file type {suffix!r} for {path}: use one of {', '.join(FORMATS)}")


def _load_hub(params: DataParams) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    try:
        import datasets

        loaded = datasets.load_dataset(params.source, revision=params.revision)
    except Exception as exc:
        raise DistilleryError(
            f"cannot load data set {params.source!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}). "
            f"Offline, or for a local copy, point at a folder with {DATA_HINT}, "
            f"e.g. --data ../shared/data/emotion"
        ) from None
    wanted = params.splits or {split: split for split in SPLITS}
    frames = {}
    for split, name in wanted.items():
        match = _matching(list(loaded), name)
        if match is None and params.splits:
            raise DistilleryError(f"no split {name!r} in {params.source}: it has {list(loaded)}; fix --data-splits")
        if match is not None:
            frames[split] = loaded[match].to_pandas()
    for split in ("train", "test"):
        if split not in frames:
            raise DistilleryError(f"no {split} split in {params.source}: it has {list(loaded)}; name one with --data-splits")
    names = None
    for column in (params.label_column, *LABEL_COLUMNS):
        feature = loaded[wanted.get("train", "train")].features.get(column) if column else None
        if feature is not None and hasattr(feature, "names"):
            names = list(feature.names)
            break
    return frames, names


# -- validation and normalisation -------------------------------------------------------
def _pick_column(frame: pd.DataFrame, wanted: str | None, defaults: tuple[str, ...], what: str, where: str, flag: str) -> str:
    if wanted is not None:
        if wanted not in frame.columns:
            raise DistilleryError(f"{what} column {wanted!r} is not in {where}: its columns are {list(frame.columns)}; fix {flag}")
        return wanted
    for name in defaults:
        if name in frame.columns:
            return name
    raise DistilleryError(
        f"no {what} column in {where}: looked for {', '.join(defaults)} among {list(frame.columns)}; name it with {flag}"
    )


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


def _sample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or len(frame) <= limit:
        return frame.reset_index(drop=True)
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), size=limit, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def hold_out_validation(train: pd.DataFrame, params: DataParams, where: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(validation, train) carved from a train split, by rows or by whole sentences."""
    if params.validation_holdout == "sentences":
        held, kept = sentence_holdout(train["text"].tolist(), params.validation_fraction, params.seed)
        if len(kept) < 1 or len(held) < 1:
            raise DistilleryError(f"train split of {where} has {len(train)} row(s) that make no sentence for validation and "
                                  f"another for train; use --data-validation-holdout rows")
    else:
        order = np.random.default_rng(params.seed).permutation(len(train))
        cut = max(1, int(round(len(train) * params.validation_fraction)))
        if len(train) - cut < 1:
            raise DistilleryError(f"train split of {params.source} has {len(train)} row(s): too few to hold out validation")
        held, kept = np.sort(order[:cut]).tolist(), np.sort(order[cut:]).tolist()
    return train.iloc[held].reset_index(drop=True), train.iloc[kept].reset_index(drop=True)


def load_splits(params: DataParams) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Read, check and normalise every split. Raises DistilleryError on any bad input."""
    if is_hub_id(params.source):
        raw, hub_names = _load_hub(params)
        where = {split: f"{params.source} [{split}]" for split in raw}
    else:
        fs, _ = _folder(params.source)
        files = locate_split_files(params)
        raw = {split: read_table(fs, path) for split, path in files.items()}
        hub_names, where = None, files
    text_col = {s: _pick_column(f, params.text_column, TEXT_COLUMNS, "text", where[s], "--data-text-column") for s, f in raw.items()}
    label_col = {s: _pick_column(f, params.label_column, LABEL_COLUMNS, "label", where[s], "--data-label-column") for s, f in raw.items()}
    given = params.label_names or hub_names
    names = given or infer_label_names(raw["train"][label_col["train"]], where["train"])
    if given and (len(names) < 2 or len(set(names)) != len(names)):
        raise DistilleryError(f"label set {names} needs at least two distinct names; fix --data-label-names")
    splits = {s: normalise_split(f, text_col[s], label_col[s], names, where[s]) for s, f in raw.items()}
    check_classes(splits["train"]["label"], names, inferred=not given, where=where["train"], column=label_col["train"])
    if "validation" not in splits:
        held, kept = hold_out_validation(splits["train"], params, where["train"])
        splits["validation"], splits["train"] = held, kept
    splits["train"] = _sample(splits["train"], params.max_train_rows, params.seed)
    for split in ("validation", "test"):
        splits[split] = _sample(splits[split], params.max_eval_rows, params.seed)
    return splits, list(names)


def source_fingerprint(params: DataParams) -> dict:
    """What the source holds, for the cache key: file checksums, or the Hub id and revision.

    A file edited in place changes the key, so it is read again; Hub data sets are
    versioned by their revision.
    """
    if is_hub_id(params.source):
        return {"hub": params.source, "revision": params.revision}
    fs, _ = _folder(params.source)
    checksums = {}
    for split, path in sorted(locate_split_files(params).items()):
        digest = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        checksums[split] = {"name": path.rsplit("/", 1)[-1], "sha256": digest.hexdigest()}
    return {"files": checksums}
