"""How Prefect caches stages: keys from the stage declaration, and hits only if verified.

Prefect stores, per cache key, a small JSON record holding the stage's ArtifactRef.
On its own it would serve that record even if the artifact behind it had been
deleted or corrupted; `StageCachePolicy` checks the artifact while computing the key
and drops a record whose artifact fails verification, so the stage runs again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from prefect.cache_policies import CachePolicy

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
