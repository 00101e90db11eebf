"""Run records: which artifact played which role in one run.

A successful run publishes a small `run` artifact (run.json) naming the artifact of
every role (dataset, teacher_tokens, student_tokens, teacher, augmented,
soft_labels, student, student_onnx, student_int8, evaluation, report) and of every
step, and points `<workload>/latest` at it. Readers (predict, explain, the
benchmarks) ask a record for a role by name instead of walking manifests' upstream
links by the input names stages happen to use.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from artifacts.store import ArtifactRef, ArtifactStore, StoreError

RUN_KIND = "run"
RUN_FILE = "run.json"


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str
    roles: dict[str, ArtifactRef]
    steps: dict[str, str] = {}  # step name -> artifact digest, in DAG order
    labels: list[str] = []  # class names in id order: what the INT8 model's outputs mean
    created: str = ""

    def role(self, name: str) -> ArtifactRef:
        try:
            return self.roles[name]
        except KeyError:
            raise StoreError(f"the run record of {self.workload!r} has no role {name!r} (it has {sorted(self.roles)})") from None


class _RunFormat:
    kind = RUN_KIND

    @staticmethod
    def missing(folder: Path) -> list[str]:
        return [] if (folder / RUN_FILE).exists() else [RUN_FILE]


def publish_run(store: ArtifactStore, record: RunRecord) -> ArtifactRef:
    record = record.model_copy(update={"created": record.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    with store.new_artifact() as out:
        (out / RUN_FILE).write_text(record.model_dump_json(indent=2))
        return store.publish(out, RUN_KIND, {"stage": "run", "params": {"workload": record.workload},
                                             "upstream": {role: ref.digest for role, ref in record.roles.items()}})


def read_run(store: ArtifactStore, ref: ArtifactRef | str) -> RunRecord:
    digest = ref.digest if isinstance(ref, ArtifactRef) else ref
    folder = store.open(ArtifactRef(kind=RUN_KIND, digest=digest))
    return RunRecord.model_validate(json.loads((folder / RUN_FILE).read_text()))


def latest_run(store: ArtifactStore, workload: str) -> RunRecord:
    """The record `<workload>/latest` points at."""
    ref = store.resolve_alias(f"{workload}/latest")
    if ref.kind != RUN_KIND:
        raise StoreError(f"alias {workload}/latest points at a {ref.kind} artifact, not a run record: rerun the "
                         f"workload once to record its roles")
    return read_run(store, ref)


def runs_naming(store: ArtifactStore, role: str, digest: str) -> list[RunRecord]:
    """Every run record whose `role` is this artifact, newest first."""
    found = []
    for candidate in store.digests():
        try:
            if store.manifest(candidate).get("kind") != RUN_KIND:
                continue
            record = read_run(store, candidate)
        except (FileNotFoundError, ValueError, StoreError):
            continue
        if role in record.roles and record.roles[role].digest == digest:
            found.append(record)
    return sorted(found, key=lambda r: r.created, reverse=True)
