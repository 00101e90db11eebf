"""What a stage is, and how any stage is run against the artifact store.

A stage is declared once (`Stage`), as a DVC stage is in dvc.yaml: its name, the
format it writes (a `tasks.formats.Format`: artifact kind and files), its typed
parameters, the upstream artifacts it reads and the libraries whose versions
matter; optionally a check that a cached artifact still fits its inputs. Its work
is a plain function

    build(params, inputs: {name: local folder}, out: empty folder, progress) -> metrics

that knows nothing of Prefect or of the store. `run_stage` opens the (verified)
upstream artifacts, calls `build`, checks that the declared files were written, and
publishes the folder with a manifest saying how it was made. The same declaration yields the cache key, so the key is derived
from what the stage consumes, never guessed.

This module lives in artifacts/ rather than tasks/ because it decides how artifacts
are made and keyed, not what they contain: editing it must not invalidate every
trained model, which it would if it were part of the stages' code fingerprint.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from pydantic import BaseModel

from artifacts.checkpoints import Checkpoints
from artifacts.keys import cache_key, code_fingerprint, library_versions
from artifacts.progress import Progress
from artifacts.store import ArtifactRef, ArtifactStore, StoreError


Build = Callable[[Any, Mapping[str, Path], Path, Progress], dict]
# (artifact folder, input folders) -> why the artifact does not fit those inputs, or "".
Validate = Callable[[Path, Mapping[str, Path]], str]


class Writes(Protocol):
    kind: str

    def missing(self, folder: Path) -> list[str]: ...


@dataclass(frozen=True)
class Stage:
    name: str
    writes: Writes
    params: type[BaseModel]
    inputs: tuple[str, ...]
    build: Build
    libraries: tuple[str, ...] = ()
    # Inputs that are not parameters nor artifacts, e.g. the checksums of source files.
    extra_key: Callable[[Any], dict] | None = None
    extra_files: tuple[Path, ...] = field(default=())
    # A content check beyond checksums, run on every cache hit: a failing artifact is recomputed.
    validate: Validate | None = None
    # Inputs among `inputs` that a run may leave out (e.g. the teacher's cached features, made only
    # when layers are frozen). One left out is absent from the key, so adding an optional input
    # to a stage leaves the keys of the runs without it as they were.
    optional: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return self.writes.kind

    def key_material(self, params: BaseModel, inputs: Mapping[str, ArtifactRef]) -> dict:
        self.check_inputs(params, inputs)
        return {
            "stage": self.name,
            "params": params,
            "upstream": {name: ref.digest for name, ref in sorted(inputs.items())},
            "code": code_fingerprint([self.build.__module__], self.extra_files),
            "versions": library_versions(self.libraries),
            "extra": self.extra_key(params) if self.extra_key else {},
        }

    def key(self, params: BaseModel, inputs: Mapping[str, ArtifactRef]) -> str:
        return cache_key(**self.key_material(params, inputs))

    def problem_with(self, store: ArtifactStore, ref: ArtifactRef, inputs: Mapping[str, ArtifactRef]) -> str:
        """Why a cached artifact of this stage must not be used for these inputs ("" if it may)."""
        problem = store.verify(ref).problem
        if problem:
            return problem
        # A record or key note could name any intact artifact; only this stage's own output fits.
        manifest = store.manifest(ref)
        if manifest.get("stage") != self.name or {ref.kind, manifest.get("kind")} != {self.kind}:
            return f"it is a {manifest.get('kind')} made by {manifest.get('stage')}, not a {self.kind} of {self.name}"
        if self.validate is None:
            return ""
        return self.validate(store.open(ref), {name: store.open(r) for name, r in inputs.items()})

    def check_inputs(self, params: BaseModel, inputs: Mapping[str, ArtifactRef]) -> None:
        if not isinstance(params, self.params):
            raise TypeError(f"{self.name} takes {self.params.__name__}, got {type(params).__name__}")
        if not set(self.inputs) - set(self.optional) <= set(inputs) <= set(self.inputs):
            optional = f" ({sorted(self.optional)} optional)" if self.optional else ""
            raise TypeError(f"{self.name} reads {sorted(self.inputs)}{optional}, got {sorted(inputs)}")


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it ("" where it does not)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def runtime() -> dict:
    """How many threads the stage's numerical libraries had: recorded, deliberately not keyed.

    Torch's thread count changes how float sums are split, so it can change a trained
    model's bytes: the emotion student of the same inputs scored 93.50% on test trained on
    two threads and 93.35% on one (the likeliest cause; nothing else differed in its key).
    Keying it would stop workers with different core counts from sharing one store, so
    the manifest says what ran instead.
    """
    torch = sys.modules.get("torch")  # only if a stage imported it; the store never needs torch
    ran = {"cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "cpu": cpu_name()}  # latencies mean nothing without the machine they were measured on
    if torch is not None:
        ran["torch_threads"] = torch.get_num_threads()
    return ran


def run_stage(
    stage: Stage,
    params: BaseModel,
    inputs: Mapping[str, ArtifactRef],
    store: ArtifactStore,
    progress: Progress | None = None,
    may_publish: Callable[[], bool] | None = None,
) -> ArtifactRef:
    """Run one stage for real and publish its artifact; returns its reference.

    `may_publish` is asked after the work, before publishing: a holder whose lock lapsed
    (artifacts/cache.py) must not publish, since another worker may be computing the key."""
    progress = progress or Progress()
    material = stage.key_material(params, inputs)
    key = cache_key(**material)
    progress.checkpoints = Checkpoints(store, key)
    local_inputs = {name: store.open(ref) for name, ref in inputs.items()}
    with store.new_artifact() as out:
        started = time.time()
        metrics = stage.build(params, local_inputs, out, progress)
        seconds = time.time() - started
        missing = stage.writes.missing(out)
        if missing:
            raise RuntimeError(f"{stage.name} did not write {missing}, which its {stage.kind} format declares")
        if may_publish is not None and not may_publish():
            raise StoreError(f"{stage.name}: this worker lost its lock on key {key[:12]} while computing (a pause "
                             f"longer than the lease, or the lock server was unreachable for that long); another "
                             f"worker may be computing the same key, so this result is not published")
        manifest = {
            **material,
            "params": params.model_dump(mode="json"),
            "key": key,
            "metrics": metrics,
            "timings": {"seconds": round(seconds, 3)},
            "runtime": runtime(),
        }
        ref = store.publish(out, stage.kind, manifest)
    try:
        store.note_key(key, ref)  # found by this key even where the flow writes no record (artifacts/cache.py)
    except OSError as exc:  # the artifact is published; losing the note only loses record-less reuse
        progress.info(f"{stage.name}: could not note cache key {key[:12]} ({type(exc).__name__}: {exc})")
    progress.checkpoints.clear()
    progress.info(f"{stage.name}: published {ref.kind} {ref.short} in {seconds:.1f}s")
    return ref
