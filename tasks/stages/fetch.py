"""Stage `fetch_dataset`: a labelled text data set as canonical train/validation/test splits.

Reading and checking the source is tasks/data/sources.py's job; this stage writes what it
read in the dataset format (tasks/formats.py). The artifact's digest depends on that
content only, so the same data read from the Hub or from a local copy is the same
artifact, and a change to the reading code that reads the same rows leaves every
later stage cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from artifacts.stage import Progress, Stage
from tasks.formats import DATASET, write_dataset
from tasks.data.sources import DataParams, load_splits, source_fingerprint


def build_dataset(params: DataParams, inputs: Mapping[str, Path], out: Path, progress: Progress) -> dict:
    splits, names = load_splits(params)
    write_dataset(out, splits, names)
    counts = {s: {names[i]: int(n) for i, n in enumerate(np.bincount(f["label"], minlength=len(names)))} for s, f in splits.items()}
    progress.info("fetch_dataset: " + ", ".join(f"{s} {len(f)} rows" for s, f in splits.items()))
    return {"rows": {s: len(f) for s, f in splits.items()}, "label_counts": counts, "labels": names}


STAGE = Stage(
    name="fetch_dataset",
    writes=DATASET,
    params=DataParams,
    inputs=(),
    build=build_dataset,
    libraries=("pandas", "pyarrow"),
    extra_key=source_fingerprint,
)
