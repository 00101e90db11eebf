"""The one cache: a stage's artifact for its inputs, found or made, once.

`cached_or_run` is the only place that decides whether a stage runs, like DVC's
`run_stage` over its run-cache: the flow's tasks, `explain`/`status` and the benchmarks
all call it (or its look-up half, `look_up`), so they agree on what is cached.

    key = the stage's cache key (artifacts/keys.py)
    look up  -> a usable artifact? cached.
    lock key -> look up again (another worker may have made it meanwhile) -> run_stage,
                which publishes the artifact and notes it under the key -> unlock.

The index is the store's own: `keys/<key>.json`, the note `run_stage` writes for every
key it publishes under. It lives in the store, so it travels with it (a local folder or
S3), needs no server, and holds only an ArtifactRef, read as plain JSON.

Older stores are still read. Runs before this module kept Prefect's cache records
(`records/<key>`); a usable one is followed and noted, so the store migrates as it is
used. Such records are read here as plain JSON and never by Prefect, whose reader would
import whatever decoder a record names. Artifacts made before key notes existed are
found in a local store by their manifests (`key`), and noted likewise.

Whatever names a candidate, it must pass its checksums and the stage's own checks
(`Stage.problem_with`: its own stage and kind, and a content check such as soft labels
belonging to the texts at hand) before it is a hit.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Literal, Mapping

from pydantic import BaseModel

from artifacts.locks import lock_manager_for
from artifacts.progress import Progress
from artifacts.records import RecordError, read_record
from artifacts.stage import Stage, run_stage
from artifacts.signing import team_key
from artifacts.store import ArtifactRef, ArtifactStore, StoreError

# Where a hit was found: the key note, an old Prefect record, or a manifest scan.
Origin = Literal["note", "record", "manifest"]


@dataclass
class Lookup:
    ref: ArtifactRef | None
    origin: Origin | None = None
    refused: list[str] = field(default_factory=list)  # candidates seen and refused, and why


def look_up(store: ArtifactStore, stage: Stage, key: str, inputs: Mapping[str, ArtifactRef]) -> Lookup:
    """The usable artifact made under `key`, where it was found, and what was refused on the way."""
    refused: list[str] = []

    def usable(ref: ArtifactRef, what: str) -> bool:
        problem = stage.problem_with(store, ref, inputs)
        if problem:
            refused.append(f"{what} names artifact {ref.short}: {problem}")
        return not problem

    try:
        noted = store.made_under(key)
    except StoreError as exc:  # a note whose signature fails: as if never noted, and said so
        refused.append(f"the key note is refused: {exc}")
        noted = None
    if noted is not None and usable(noted, "the key note"):
        return Lookup(noted, "note", refused)
    if team_key() is not None:
        return Lookup(None, None, refused)  # with a team key only signed notes count: records and manifests carry none
    try:
        recorded = read_record(store, key)
    except FileNotFoundError:
        recorded = None
    except RecordError as exc:
        refused.append(f"the old Prefect cache record is refused: {exc}")
        recorded = None
    if recorded is not None and usable(recorded, "the old Prefect cache record"):
        return Lookup(recorded, "record", refused)
    found = _by_manifest(store, stage, key, inputs) if store.is_local else None
    return Lookup(found, "manifest" if found else None, refused)


def _by_manifest(store: ArtifactStore, stage: Stage, key: str, inputs: Mapping[str, ArtifactRef]) -> ArtifactRef | None:
    """An artifact whose manifest says it was made under `key`: stores from before key notes.

    Reads every manifest, which on a remote store would cost a request per artifact on
    every miss, so only local stores are searched this way.
    """
    made = []
    for digest in store.digests():
        try:
            manifest = store.manifest(digest)
        except (FileNotFoundError, ValueError):  # half-deleted or corrupt: `cache verify` reports it
            continue
        if isinstance(manifest, dict) and manifest.get("key") == key:
            made.append((str(manifest.get("published", "")), digest))
    # A stage whose output is not bit-reproducible can have made several; the newest is
    # the likeliest to be what downstream artifacts were built on.
    for _, digest in sorted(made, reverse=True):
        ref = ArtifactRef(kind=stage.kind, digest=digest)  # problem_with refuses it if it is not the stage's
        if not stage.problem_with(store, ref, inputs):
            return ref
    return None


@dataclass
class Outcome:
    ref: ArtifactRef
    cached: bool
    key: str
    origin: Origin | None  # where a cached artifact was found; None when computed


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def cached_or_run(stage: Stage, params: BaseModel, inputs: Mapping[str, ArtifactRef], store: ArtifactStore,
                  progress: Progress | None = None, refresh: bool = False) -> Outcome:
    """The stage's artifact for these inputs: found (and noted) or made, one computation per key.

    `refresh` runs the stage even when a usable artifact exists (its result replaces the note).
    """
    progress = progress or Progress()
    key = stage.key(params, inputs)
    if not refresh:
        hit = _hit(store, stage, key, inputs, progress)
        if hit is not None:
            return hit
    locks = lock_manager_for(store)
    holder = holder_name()
    locks.acquire_lock(key, holder)
    try:
        if not refresh:  # made by another run while this one waited for the lock
            hit = _hit(store, stage, key, inputs, progress)
            if hit is not None:
                return hit
        ref = run_stage(stage, params, inputs, store, progress, may_publish=lambda: locks.still_held(key, holder))
        return Outcome(ref, cached=False, key=key, origin=None)
    finally:
        try:
            locks.release_lock(key, holder)
        except ValueError:  # the lease was lost meanwhile: nothing of this holder's to release
            pass


def _hit(store: ArtifactStore, stage: Stage, key: str, inputs: Mapping[str, ArtifactRef], progress: Progress) -> Outcome | None:
    found = look_up(store, stage, key, inputs)
    for reason in found.refused:
        progress.info(f"{stage.name}: {reason}; not used")
    if found.ref is None:
        return None
    if found.origin != "note":
        store.note_key(key, found.ref)  # migrates an old store: the next look-up is one read
        progress.info(f"{stage.name}: reusing {found.ref.kind} {found.ref.short}, found by its "
                      f"{'old Prefect cache record' if found.origin == 'record' else 'manifest'} and noted under its key")
    return Outcome(found.ref, cached=True, key=key, origin=found.origin)
