"""Reading a labelled text data set from its source into checked, canonical splits.

The helper behind stage `fetch_dataset` (tasks/stages/fetch.py) and the pipeline's preflight.

Sources: a Hugging Face Hub id (e.g. dair-ai/emotion), or a folder (local path or
any fsspec URI) holding one file per split (formats: tasks/data/files.py; labels and
their checks: tasks/data/labels.py).
Every problem with the data is reported here, before any model is loaded or
trained, and nothing is published.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import fsspec
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from artifacts.store import sha256_file
from tasks.errors import DistilleryError
from tasks.formats import SPLITS
from tasks.data.files import FORMATS, LABEL_COLUMNS, TEXT_COLUMNS, check_sizes, read_table
from tasks.data.labels import check_classes, infer_label_names, normalise_split
from tasks.data.phrases import sentence_holdout

SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "val", "valid", "dev"), "test": ("test",)}
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
    max_file_mb: float = Field(1024, gt=0, description="largest split file to read, in MB: a file is read whole into memory (and "
                                                       "parsed into a few times its size), so a bigger one is refused before any is read")


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


def _is_glob(name: str) -> bool:
    return any(c in name for c in "*?[")


def _data_files(paths: list[str]) -> list[str]:
    return sorted(p for p in paths if Path(p.rstrip("/")).suffix.lower() in FORMATS)


def locate_split_files(params: DataParams) -> dict[str, list[str]]:
    """Split name -> its files, in the order they are read, for folder sources. A split is
    one file (train.csv), a folder of shards (train/, every data file in it), or a glob
    named in --data-splits (train/*.csv); shards are read in sorted order, so a daily drop
    (a new file) adds rows. Validation may be absent."""
    fs, root = _folder(params.source)
    entries = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in fs.ls(root, detail=True)}
    data_files = [n for n in entries if entries[n]["type"] != "directory" and Path(n).suffix.lower() in FORMATS]
    folders = [n for n in entries if entries[n]["type"] == "directory"]
    found: dict[str, list[str]] = {}
    wanted = params.splits or {split: split for split in SPLITS}
    for split, name in wanted.items():
        if split not in SPLITS:
            raise DistilleryError(f"unknown split {split!r} in --data-splits: use {', '.join(SPLITS)}")
        if _is_glob(name):
            shards = _data_files(fs.glob(f"{root}/{name}"))
            if not shards:
                raise DistilleryError(f"the {split} split's pattern {name!r} matches no data file ({', '.join(FORMATS)}) "
                                      f"in {params.source}: fix --data-splits")
            found[split] = shards
            continue
        match = _matching(data_files, name)
        if match is not None:
            found[split] = [entries[match]["name"]]
            continue
        folder = _matching(folders, name)
        if folder is not None:
            shards = _data_files(fs.ls(entries[folder]["name"], detail=False))
            if not shards:
                raise DistilleryError(f"the {split} split's folder {entries[folder]['name']} holds no data file "
                                      f"({', '.join(FORMATS)}): add its shards, or name another with --data-splits")
            found[split] = shards
        elif params.splits:
            raise DistilleryError(f"no file {name!r} for the {split} split in {params.source}: found {sorted(entries)}; fix --data-splits")
    for split in ("train", "test"):
        if split not in found:
            raise DistilleryError(
                f"no {split} split in {params.source}: expected a file named {split}"
                f"{{{','.join(FORMATS)}}} or a folder {split}/ of such files, or name it with --data-splits '{{\"{split}\": \"FILE\"}}'"
            )
    return found


def read_split(fs: fsspec.AbstractFileSystem, split: str, paths: list[str]) -> pd.DataFrame:
    """A split's shards as one table, in order; every shard must have the first one's columns."""
    frames = [read_table(fs, path) for path in paths]
    first = list(frames[0].columns)
    for path, frame in zip(paths[1:], frames[1:]):
        if list(frame.columns) != first:
            raise DistilleryError(f"shard {path} of the {split} split has columns {list(frame.columns)}, the first "
                                  f"shard ({paths[0]}) {first}: give every shard of a split the same columns")
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def split_where(paths: list[str]) -> str:
    """How a split is named in messages: its file, or its shards."""
    return paths[0] if len(paths) == 1 else f"{paths[0].rsplit('/', 1)[0]}/ ({len(paths)} shards)"


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
        check_sizes(fs, files, params.max_file_mb)
        raw = {split: read_split(fs, split, paths) for split, paths in files.items()}
        hub_names, where = None, {split: split_where(paths) for split, paths in files.items()}
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
    """What the source holds, for the cache key: each file's checksum, or the Hub id and revision.

    A file edited in place, or a shard added, changes the key, so the data is read again;
    a Hub data set is keyed by its revision, which the edge resolves to a commit
    (resolve_data_revision) so that a changed data set is a new key.
    """
    if is_hub_id(params.source):
        return {"hub": params.source, "revision": params.revision}
    fs, root = _folder(params.source)
    checksums = {}
    for split, paths in sorted(locate_split_files(params).items()):
        shards = []
        for path in paths:
            shards.append({"name": path[len(root):].lstrip("/"), "sha256": sha256_file(path, fs)})
        checksums[split] = shards
    return {"files": checksums}


def hub_offline() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def resolve_data_revision(params: DataParams) -> DataParams:
    """A Hub source pinned to the commit it is at now, so the cache key changes when the data set
    does (a nightly run would otherwise never read it again). Folder sources are keyed by their
    files' checksums already. Offline, an unpinned Hub source is refused: it cannot be read, and
    nothing could tell whether it changed."""
    if not is_hub_id(params.source):
        return params
    if hub_offline():
        if params.revision:
            return params  # pinned: used as given (from the local Hub cache, if it has it)
        raise DistilleryError(
            f"data set {params.source!r} is on the Hugging Face Hub, and this machine is offline (HF_HUB_OFFLINE): "
            f"it cannot be read, nor its revision resolved. Point at a local copy with {DATA_HINT}, "
            f"e.g. --data ../shared/data/emotion, or pin a revision the local Hub cache holds with --data-revision COMMIT")
    try:
        from huggingface_hub import HfApi

        commit = HfApi().dataset_info(params.source, revision=params.revision).sha
    except Exception as exc:
        raise DistilleryError(
            f"cannot resolve data set {params.source!r} at revision {params.revision or 'main'!r} on the Hugging Face Hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}): check the id and "
            f"--data-revision, or point at a local copy with {DATA_HINT}") from None
    return params.model_copy(update={"revision": commit})
