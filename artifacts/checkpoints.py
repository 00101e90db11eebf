"""Checkpoints: a long stage's work in progress, kept in the store so that a crash
costs at most one checkpoint interval.

They live under checkpoints/<cache key>/, so only a run with exactly the same inputs
resumes from them, and are deleted once the stage's artifact is published. Each save is
a new generation, checkpoints/<key>/<step>-<id>/, whose checkpoint.json (the step and
the checksums of its files) is written last; older generations are removed only once
the new one is complete. A crash or an upload error mid-save leaves the previous
checkpoint in place, and a torn or altered generation is skipped, never loaded.

On a remote store a resume downloads the newest intact generation into this machine's
cache (one copy per key, replaced by the next resume, deleted with the checkpoints).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from artifacts.names import file_name_problem, inside, links_in
from artifacts.store import DIGEST_PATTERN, ArtifactStore, checksum_tree, machine_cache

META = "checkpoint.json"
DEFAULT_SECONDS = 300.0


GENERATION = re.compile(r"^(\d{12})-[0-9a-f]{8}$")  # zero-padded step: names sort by step


class Checkpoints:
    def __init__(self, store: ArtifactStore, key: str, every_seconds: float | None = None):
        if not DIGEST_PATTERN.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        self.store = store
        self.key = key
        self.every_seconds = every_seconds if every_seconds is not None else float(
            os.environ.get("DISTILLERY_CHECKPOINT_SECONDS", DEFAULT_SECONDS))
        self.path = f"{store.path}/checkpoints/{key}"
        self._last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_seconds

    def save(self, step: int, write: Callable[[Path], None]) -> None:
        """`write(folder)` fills a fresh folder; it becomes the newest generation, then older ones go."""
        name = f"{step:012d}-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="checkpoint-", dir=self._local_parent()) as tmp:
            folder = Path(tmp) / name
            folder.mkdir()
            write(folder)
            (folder / META).write_text(json.dumps({"step": step, "saved_at": time.time(), "files": checksum_tree(folder)}))
            if self.store.is_local:
                Path(self.path).mkdir(parents=True, exist_ok=True)
                os.rename(folder, Path(self.path) / name)  # atomic: the generation appears whole
            else:
                for file in sorted(folder.rglob("*")):
                    if file.is_file() and file.name != META:
                        self.store.fs.put_file(str(file), f"{self.path}/{name}/{file.relative_to(folder).as_posix()}")
                self.store.fs.put_file(str(folder / META), f"{self.path}/{name}/{META}")  # complete from here
        for older in self._generations()[1:]:
            if older != name:
                self._remove(older)
        self._last = time.monotonic()

    def latest(self) -> tuple[int, Path] | None:
        """(step, local folder) of the newest intact checkpoint, if any."""
        for name in self._generations():
            folder = self._local_copy(name)
            if folder is None or links_in(folder):  # a link is a path no checksum covers: skipped, never loaded
                continue
            try:
                meta = json.loads((folder / META).read_text())
            except (OSError, ValueError):
                continue
            if {n: sha for n, sha in checksum_tree(folder).items() if n != META} == meta.get("files"):
                return int(meta["step"]), folder
        return None

    def saved_at(self) -> float:
        """When the newest complete generation was saved (epoch seconds; 0.0 if there is none).
        Read from its checkpoint.json, not the file system, whose modification times S3 does not keep."""
        for name in self._generations():
            try:
                return float(json.loads(self.store.fs.cat_file(f"{self.path}/{name}/{META}")).get("saved_at", 0.0))
            except (FileNotFoundError, ValueError):
                continue
        return 0.0

    def clear(self) -> None:
        if self.store.fs.exists(self.path):
            self.store.fs.rm(self.path, recursive=True)
        shutil.rmtree(self._download_parent(), ignore_errors=True)

    def _generations(self) -> list[str]:
        """Names of the generations with a checkpoint.json, newest first (torn ones have none)."""
        try:
            entries = self.store.fs.ls(self.path, detail=False)
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        complete = [n for n in names if GENERATION.match(n) and self.store.fs.exists(f"{self.path}/{n}/{META}")]
        return sorted(complete, reverse=True)

    def _remove(self, name: str) -> None:
        try:
            self.store.fs.rm(f"{self.path}/{name}", recursive=True)
        except FileNotFoundError:
            pass

    def _local_copy(self, name: str) -> Path | None:
        if self.store.is_local:
            return Path(self.path) / name
        parent = self._download_parent()
        shutil.rmtree(parent, ignore_errors=True)  # the previous resume's copy
        parent.mkdir(parents=True)
        base = f"{self.path}/{name}"
        try:
            # File by file, each name checked: a recursive get would write wherever a stored name points.
            root = base.split("://", 1)[-1].strip("/")
            names = [path.split("://", 1)[-1].strip("/")[len(root):].lstrip("/") for path in self.store.fs.find(base)]
            if not names or any(file_name_problem(n) and n != META for n in names):
                return None  # a generation with a name that could escape its folder is skipped, never fetched
            local = parent / name
            self.store.fs.get([f"{base}/{n}" for n in names], [str(inside(local, n)) if n != META else str(local / META)
                                                              for n in names])
        except FileNotFoundError:  # removed by a newer save meanwhile
            return None
        return parent / name if (parent / name / META).exists() else None

    def _download_parent(self) -> Path:
        return machine_cache() / "checkpoints" / self.key

    def _local_parent(self) -> str | None:
        if not self.store.is_local:
            return None
        parent = Path(self.store.path) / "checkpoints"
        parent.mkdir(parents=True, exist_ok=True)
        return str(parent)
