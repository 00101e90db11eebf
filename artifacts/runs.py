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
import re
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from artifacts import signing
from artifacts.store import ArtifactRef, ArtifactStore, NoAlias, StoreError

RUN_KIND = "run"
RUN_FILE = "run.json"


class RunRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workload: str
    roles: dict[str, ArtifactRef]
    steps: dict[str, str] = {}  # step name -> artifact digest, in DAG order
    labels: list[str] = []  # class names in id order: what the INT8 model's outputs mean
    data_findings: list[dict] = []  # the data checks' findings (tasks/data/checks.py), allowed ones included
    decision: dict = {}  # the promotion gate's decision (tasks/stages/judge.py decide)
    code: dict = {}  # the code that ran: git commit and whether tracked files were edited, package version (flows/version.py)
    created: str = ""
    # The record's own digest, set when it is read from the store; never written into it.
    digest: str = Field("", exclude=True)

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
        (out / RUN_FILE).write_text(json.dumps(signing.sign(record.model_dump(mode="json"), RUN_KIND), indent=2))
        return store.publish(out, RUN_KIND, {"stage": "run", "params": {"workload": record.workload},
                                             "upstream": {role: ref.digest for role, ref in record.roles.items()}})


def read_run(store: ArtifactStore, ref: ArtifactRef | str) -> RunRecord:
    digest = ref.digest if isinstance(ref, ArtifactRef) else ref
    folder = store.open(ArtifactRef(kind=RUN_KIND, digest=digest))
    try:
        payload = json.loads((folder / RUN_FILE).read_text())
    except ValueError as exc:
        raise StoreError(f"run record {digest[:12]} is not JSON ({exc})") from None
    payload = signing.checked(payload, RUN_KIND, f"run record {digest[:12]}")
    return RunRecord.model_validate({**payload, "digest": digest})


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


INT8_ROLE = "student_int8"
DIGEST_PREFIX = re.compile(r"^[0-9a-f]{6,64}$")


def find_run(store: ArtifactStore, name: str | None, workload: str | None = None) -> RunRecord:
    """The run record `name` means, for predict and the benchmarks alike.

    `name`: an alias, or a digest (or unique prefix of 6+ characters) of a run record or
    of a run's INT8 student; None: `<workload>/latest`. With `workload`, a run of another
    workload is refused, and of several runs naming one INT8 student, that workload's
    newest is taken. StoreError, saying what to pass instead, for anything else.
    """
    if name is None:
        return latest_run(store, workload or "emotion")
    if DIGEST_PREFIX.match(name):
        matches = [d for d in store.digests() if d.startswith(name)]
        if len(matches) > 1:
            raise StoreError(f"digest prefix {name!r} matches {len(matches)} artifacts in {store.root}: give more characters")
        if not matches:
            raise StoreError(f"no artifact with digest {name!r} in {store.root}: "
                             f"list them with `distillery list --store {store.root}`")
        digest = matches[0]
    else:
        try:
            digest = store.resolve_alias(name).digest
        except NoAlias:
            known = ", ".join(store.aliases()) or "none yet"
            raise StoreError(f"no alias {name!r} in store {store.root} (aliases: {known}); run a workload "
                             f"first, e.g. `distillery run --preset emotion`, or pass a model digest") from None
    try:
        manifest = store.manifest(digest)
    except FileNotFoundError:
        raise StoreError(f"{name!r} names artifact {digest[:12]}, which is no longer in {store.root}: rerun the "
                         f"workload to rebuild it") from None
    if manifest.get("kind") == RUN_KIND:
        record = read_run(store, digest)
    else:
        runs = runs_naming(store, INT8_ROLE, digest)
        if not runs:
            raise StoreError(
                f"{name!r} is a {manifest.get('kind')} artifact made by stage {manifest.get('stage')!r}, and no run "
                f"record names it as its INT8 model: pass the alias <workload>/latest, a run record's digest, "
                f"or the digest of a run's INT8 model")
        record = next((run for run in runs if run.workload == workload), runs[0])
    if workload is not None and record.workload != workload:
        raise StoreError(f"{name!r} is a run of workload {record.workload!r}, not {workload!r}: "
                         f"pass --workload {record.workload}")
    return record
