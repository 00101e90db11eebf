"""Checkpoints: a long stage's work in progress, kept in the store so that a crash
costs at most one checkpoint interval.

They live under checkpoints/<cache key>/, so only a run with exactly the same inputs
resumes from them, and are deleted once the stage's artifact is published. A
checkpoint is written completely before it replaces the previous one, and carries
the checksums of its files: a torn or altered checkpoint is ignored, never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from artifacts.store import DIGEST_PATTERN, ArtifactStore, checksum_tree

META = "checkpoint.json"
DEFAULT_SECONDS = 300.0


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
        """`write(folder)` fills a fresh folder; it then replaces the previous checkpoint."""
        with tempfile.TemporaryDirectory(prefix="checkpoint-", dir=self._local_parent()) as tmp:
            folder = Path(tmp) / "new"
            folder.mkdir()
            write(folder)
            (folder / META).write_text(json.dumps({"step": step, "files": checksum_tree(folder)}))
            if self.store.is_local:
                target = Path(self.path)
                old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex}")
                if target.exists():
                    os.rename(target, old)
                os.rename(folder, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                self.clear()
                for file in sorted(folder.rglob("*")):
                    if file.is_file() and file.name != META:
                        self.store.fs.put_file(str(file), f"{self.path}/{file.relative_to(folder).as_posix()}")
                self.store.fs.put_file(str(folder / META), f"{self.path}/{META}")
        self._last = time.monotonic()

    def latest(self) -> tuple[int, Path] | None:
        """(step, local folder) of the last complete checkpoint, if any and intact."""
        if self.store.is_local:
            folder = Path(self.path)
        else:
            if not self.store.fs.exists(f"{self.path}/{META}"):
                return None
            folder = Path(tempfile.mkdtemp(prefix="checkpoint-"))
            self.store.fs.get(self.path + "/", str(folder), recursive=True)
        meta_file = folder / META
        if not meta_file.exists():
            return None
        meta = json.loads(meta_file.read_text())
        files = {name: sha for name, sha in checksum_tree(folder).items() if name != META}
        if files != meta["files"]:
            return None
        return int(meta["step"]), folder

    def clear(self) -> None:
        if self.store.fs.exists(self.path):
            self.store.fs.rm(self.path, recursive=True)

    def _local_parent(self) -> str | None:
        if not self.store.is_local:
            return None
        parent = Path(self.store.path) / "checkpoints"
        parent.mkdir(parents=True, exist_ok=True)
        return str(parent)
