"""How Prefect caches stages: keys from the stage declaration, and hits only if verified.

Prefect stores, per cache key, a small JSON record holding the stage's ArtifactRef.
On its own it would serve that record even if the artifact behind it had been
deleted or corrupted; `StageCachePolicy` checks the record (artifacts/records.py), the
artifact's checksums and the stage's own content check (`Stage.validate`: soft labels
must belong to the texts at hand) while computing the key, and drops a record that
fails any of them, so the stage runs again (or reuses an artifact published under the
key without a record: flows/pipeline.py `stage_task`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from prefect.cache_policies import CachePolicy

from artifacts.cache import NO_RECORD, from_record
from artifacts.records import drop_record
from artifacts.stage import Stage
from artifacts.store import ArtifactStore

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
        self._drop_unusable_record(key, store, inputs["inputs"])
        return key

    def _drop_unusable_record(self, key: str, store: ArtifactStore, inputs: dict) -> None:
        ref, problem = from_record(store, self.stage, key, inputs)
        if ref is None and problem != NO_RECORD:
            _run_logger().warning(
                "%s: cache record for key %s is unusable (%s); not used",
                self.stage.name, key[:12], problem,
            )
            drop_record(store, key)
