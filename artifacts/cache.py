"""Where a stage's earlier artifact for a cache key is found, checked as a cache hit is.

Two things can name it. Prefect's record for the key, written when a flow ran the
stage. And the note `run_stage` leaves of every key it publishes under, which covers
artifacts made by plain `run_stage` calls (the benchmarks make teachers that way) and
by flows whose record was since lost or refused. Without the second, an hour of teacher training made by
a benchmark would be trained again by the next flow run on the same store, though
nothing it was made from changed.

Either way the artifact must pass its checksums and the stage's own content check
(`Stage.problem_with`), and a record is read as plain JSON before it is trusted
(artifacts/records.py). The flow's cache policy, its task body, `explain` and the
benchmarks all decide here, so they agree on what is cached.
"""

from __future__ import annotations

from typing import Mapping

from artifacts.records import RecordError, read_record
from artifacts.stage import Stage
from artifacts.store import ArtifactRef, ArtifactStore

NO_RECORD = "no cache record for these inputs"


def from_record(store: ArtifactStore, stage: Stage, key: str,
                inputs: Mapping[str, ArtifactRef]) -> tuple[ArtifactRef | None, str]:
    """The usable artifact the record for `key` points to, or None and why not."""
    try:
        ref = read_record(store, key)
    except FileNotFoundError:
        return None, NO_RECORD
    except RecordError as exc:
        return None, str(exc)
    problem = stage.problem_with(store, ref, inputs)
    return (None, f"artifact {ref.short}: {problem}") if problem else (ref, "")


def published(store: ArtifactStore, stage: Stage, key: str, inputs: Mapping[str, ArtifactRef]) -> ArtifactRef | None:
    """A usable artifact that `run_stage` made under `key`, if the store holds one.

    `run_stage` notes every key it publishes under (`ArtifactStore.note_key`). A local
    store is also searched by manifest, for artifacts made before keys were noted; that
    reads every manifest, which on a remote store would cost a request per artifact on
    every miss, so remote stores rely on the notes.
    """
    ref = store.made_under(key)
    if ref is not None and not stage.problem_with(store, ref, inputs):
        return ref
    if not store.is_local:
        return None
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


def cached(store: ArtifactStore, stage: Stage, key: str, inputs: Mapping[str, ArtifactRef]) -> ArtifactRef | None:
    """The usable artifact made under `key`: the record's, else the key note's or a manifest's."""
    ref, _ = from_record(store, stage, key, inputs)
    return ref or published(store, stage, key, inputs)
