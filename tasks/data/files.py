"""Table files: one split's file as a DataFrame, by its suffix.

  .txt      `text;label` lines (the emotion files; the text is cut at the last ';')
  .tsv      GLUE style, tab separated with a header
  .csv      comma separated with a header
  .jsonl    one JSON object per line
  .parquet
A file that is not UTF-8 or does not parse is refused naming the file, the line where
known, and the fix.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import fsspec
import pandas as pd

from tasks.errors import DistilleryError

FORMATS = (".txt", ".tsv", ".csv", ".jsonl", ".parquet")
TEXT_COLUMNS = ("text", "sentence")
LABEL_COLUMNS = ("label", "label_name", "labels")


def check_sizes(fs: fsspec.AbstractFileSystem, files: dict[str, list[str]], max_mb: float) -> None:
    """Refuse, before reading any, a split file too big to read whole on this machine."""
    for split, path in ((split, path) for split, paths in files.items() for path in paths):
        size = fs.size(path)
        if size is not None and size > max_mb * 1e6:
            raise DistilleryError(
                f"the {split} file {path} is {size / 1e6:,.0f} MB, above the {max_mb:g} MB a split file may hold "
                f"(--data-max-file-mb): it is read whole into memory; raise the limit if this machine has several "
                f"times that in memory, or cut the file down")


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
