"""How Prefect caches stages: keys from the stage declaration, hits only if verified,
and locks that expire when their holder dies.

Prefect stores, per cache key, a small JSON record holding the stage's ArtifactRef.
On its own it would serve that record even if the artifact behind it had been
deleted or corrupted; `StageCachePolicy` checks the artifact while computing the key
and drops a record whose artifact fails verification, so the stage runs again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from prefect.cache_policies import CachePolicy
from prefect.locking.filesystem import FileSystemLockManager
from prefect.types._datetime import now

from artifacts.stage import Stage
from artifacts.store import ArtifactRef, ArtifactStore

log = logging.getLogger("distillery.cache")


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run context
        return log


@dataclass
class StageCachePolicy(CachePolicy):
    """Cache key = the stage's declared inputs; see artifacts/keys.py."""

    stage: Optional[Stage] = None

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> Optional[str]:
        assert self.stage is not None, "StageCachePolicy needs a stage"
        key = self.stage.key(inputs["params"], inputs["inputs"])
        store = ArtifactStore(inputs["store"])
        self._drop_unusable_record(task_ctx, key, store)
        return key

    def _drop_unusable_record(self, task_ctx: Any, key: str, store: ArtifactStore) -> None:
        result_store = getattr(task_ctx, "result_store", None)
        if result_store is None or not result_store.exists(key):
            return
        try:
            ref = result_store.read(key).result
            problem = store.verify(ref).problem if isinstance(ref, ArtifactRef) else "not an artifact"
        except Exception as exc:  # unreadable record
            problem = f"record unreadable ({type(exc).__name__})"
        if problem:
            _run_logger().warning(
                "%s: cached artifact for key %s is unusable (%s); recomputing",
                self.stage.name, key[:12], problem,
            )
            store.fs.rm(f"{store.records_path}/{key}")


class LeaseLockManager(FileSystemLockManager):
    """File locks held as short leases that a background thread keeps renewing.

    Prefect's file locks never expire unless given a hold timeout, and it passes none,
    so a worker killed mid-stage would block that stage forever. A fixed timeout would
    instead let a second run start a long training the first is still doing. A lease
    renewed while the holder lives gives both: it outlives any stage, and it lapses
    `lease_seconds` after the holder dies.
    """

    def __init__(self, lock_files_directory: Path, lease_seconds: float = 60.0):
        super().__init__(Path(lock_files_directory))
        self.lease_seconds = lease_seconds
        self._renewers: dict[tuple[str, str], threading.Event] = {}
        # Serializes renewals with release, so a renewal never resurrects a released lock.
        self._mutex = threading.Lock()

    def __deepcopy__(self, memo: dict) -> "LeaseLockManager":
        return self  # a handle on shared lock files, not a value to copy

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout or self.lease_seconds)
        if acquired and (key, holder) not in self._renewers:
            stop = threading.Event()
            self._renewers[(key, holder)] = stop
            threading.Thread(target=self._renew, args=(key, holder, stop), daemon=True).start()
        return acquired

    def release_lock(self, key: str, holder: str) -> None:
        with self._mutex:
            stop = self._renewers.pop((key, holder), None)
            if stop is not None:
                stop.set()
            super().release_lock(key, holder)

    def _renew(self, key: str, holder: str, stop: threading.Event) -> None:
        path = self._lock_path_for_key(key)
        while not stop.wait(self.lease_seconds / 3):
            with self._mutex:
                if stop.is_set():
                    return
                expiration = now("UTC") + timedelta(seconds=self.lease_seconds)
                tmp = path.with_suffix(f".{os.getpid()}.renew")
                tmp.write_text(json.dumps({"holder": holder, "expiration": str(expiration)}))
                os.replace(tmp, path)
                cached = self._locks.get(key)
                if cached is not None:
                    cached["expiration"] = expiration
