"""The generic pipeline flow: seven stages, each a cached Prefect task.

    fetch_dataset -> tokenize -> fine_tune_teacher -> distil_student
                  -> export_onnx -> quantize -> evaluate

`stage_task` is the one place a stage becomes a Prefect task, so every stage gets
the same cache policy (key from its declared inputs, verified hits), isolation
(one computation per key, however many runs ask at once), and JSON results (an
ArtifactRef, never a pickled model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.filesystems import RemoteFileSystem
from prefect.states import State

from artifacts.policy import LeaseLockManager, StageCachePolicy
from artifacts.stage import Progress, Stage, run_stage
from artifacts.store import ArtifactRef, ArtifactStore
from flows.config import PipelineConfig
from tasks import data, distil, evaluate, export, quantize, teacher, tokenize
from tasks.errors import DistilleryError
from tasks.models import load_config

STAGE_NAMES = tuple(s.name for s in (data.STAGE, tokenize.STAGE, teacher.STAGE, distil.STAGE, export.STAGE, quantize.STAGE, evaluate.STAGE))


def preflight(config: PipelineConfig) -> None:
    """Every check that needs no training, so bad input fails in seconds, storing nothing."""
    teacher_config = load_config(config.teacher.model)
    distil.student_layers(config.student, teacher_config.num_hidden_layers)
    if not data.is_hub_id(config.data.source):
        data.load_splits(config.data)  # reads and checks every split (seconds); Hub sources are checked by fetch_dataset


def stage_task(stage: Stage, store: ArtifactStore):
    policy = StageCachePolicy(
        stage=stage,
        isolation_level="SERIALIZABLE",
        lock_manager=LeaseLockManager(store.locks_path),
    )
    records = Path(store.records_path) if store.is_local else RemoteFileSystem(basepath=f"{store.root}/records")

    def run(params: Any, inputs: dict[str, ArtifactRef], store: str) -> ArtifactRef:
        return run_stage(stage, params, inputs, ArtifactStore(store), Progress(get_run_logger().info))

    return task(
        run,
        name=stage.name,
        cache_policy=policy,
        persist_result=True,
        result_serializer="json",
        result_storage=records,
        retries=0,
    )


class StageRunner:
    """Calls stages as tasks and notes, per stage, whether it was computed or cached."""

    def __init__(self, store: ArtifactStore):
        self.store = store
        self.stages: dict[str, dict] = {}

    def __call__(self, stage: Stage, params: Any, **inputs: ArtifactRef) -> ArtifactRef:
        started = time.time()
        state: State = stage_task(stage, self.store)(params, inputs, self.store.root, return_state=True)
        ref = state.result()  # raises the stage's own error if it failed
        self.stages[stage.name] = {
            "state": "cached" if state.name == "Cached" else "computed",
            "artifact": ref.digest,
            "seconds": round(time.time() - started, 3),
        }
        return ref


@flow(name="distillery", log_prints=True)
def distillery_pipeline(config: PipelineConfig, store: str = ".distillery") -> dict:
    """Fetch, tokenize, fine-tune a teacher, distil a student, export, quantize, evaluate."""
    preflight(config)
    artifacts = ArtifactStore(store)
    stage = StageRunner(artifacts)

    dataset = stage(data.STAGE, config.data)
    tokens = stage(tokenize.STAGE, config.tokenize, dataset=dataset)
    teacher_model = stage(teacher.STAGE, config.teacher, tokens=tokens)
    student_model = stage(distil.STAGE, config.student, tokens=tokens, teacher=teacher_model)
    student_onnx = stage(export.STAGE, config.export, model=student_model, tokens=tokens)
    student_int8 = stage(quantize.STAGE, config.quantize, onnx=student_onnx, tokens=tokens)
    report = stage(evaluate.STAGE, config.evaluate, tokens=tokens, teacher=teacher_model,
                   student=student_model, student_int8=student_int8)

    artifacts.set_alias(f"{config.name}/latest", student_int8)
    metrics = json.loads((artifacts.open(report) / "metrics.json").read_text())["models"]
    return {"stages": stage.stages, "metrics": metrics, "store": artifacts.root}


__all__ = ["distillery_pipeline", "preflight", "DistilleryError", "STAGE_NAMES"]
