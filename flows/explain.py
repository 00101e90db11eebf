"""Why each stage would, or would not, rerun (`python -m artifacts explain`).

It walks the pipeline's own DAG (`flows.dag.run_dag`) without running anything:
each stage's cache key is worked out from its parameters, code and the artifacts its
upstream stages would hand it, and looked up by the one cache's own look-up
(artifacts/cache.py `look_up`), as the real run does. A stage is cached when a sound
artifact was made under that key, even by an earlier run than the latest. Otherwise the stage would run, and explain
names what differs from the artifact the same step made in the workload's latest
run (its run record, `<name>/latest`, names them): a parameter, a code
module, a library version, a source file, an upstream artifact, or an upstream
stage that reruns. Runs of other workload names in the same store share the cache
(a stage any of them made is cached) but not the comparison.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from artifacts.cache import look_up
from artifacts.runs import latest_run
from artifacts.stage import Stage
from artifacts.store import ArtifactRef, ArtifactStore, StoreError
from artifacts.promotions import production_run
from flows.dag import run_dag
from flows.promotion import production_roles
from flows.pipeline import resolve


def last_manifests(store: ArtifactStore, name: str) -> dict[str, dict]:
    """Step name -> manifest of the artifact it made in the workload's latest run (from its run record)."""
    try:
        record = latest_run(store, name)
    except StoreError:
        return {}
    found = {}
    for step, digest in record.steps.items():
        try:
            found[step] = store.manifest(digest)
        except FileNotFoundError:
            continue
    return found


def _changes(old: dict, new: dict, what: str) -> list[str]:
    lines = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            before, after = old.get(name, "(absent)"), new.get(name, "(absent)")
            if what == "code":
                lines.append(f"code of {name} changed" if name in old and name in new else f"code module {name} {'added' if name in new else 'removed'}")
            else:
                lines.append(f"{what} {name}: {_short(before)} -> {_short(after)}")
    return lines


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class WouldRun(NamedTuple):
    """What a stage that would recompute hands downstream: no artifact yet."""

    stage: str


NULL_DIGEST = "0" * 64


def _reasons(store: ArtifactStore, stage: Stage, params: Any, inputs: dict, manifest: dict) -> list[str]:
    """What differs between this run's inputs to `stage` and those of the artifact it made last."""
    upstream = manifest["upstream"]
    # An input the stage reads now but did not when it made that artifact (a stage
    # added upstream since) stands in with a null digest, so the other differences
    # can still be listed.
    new_inputs = [name for name in inputs if name not in upstream]  # an optional input left out is not new
    known = {name: ref if isinstance(ref, ArtifactRef) else ArtifactRef(kind="unknown", digest=upstream.get(name, NULL_DIGEST))
             for name, ref in inputs.items()}
    material = stage.key_material(params, known)
    reasons = [f"it now also reads {name!r}, which its artifact was made without" for name in new_inputs]
    reasons += [f"upstream {ref.stage} reruns" for ref in inputs.values() if isinstance(ref, WouldRun)]
    reasons += [f"upstream {name}: artifact {upstream[name][:12]} -> {ref.digest[:12]}" for name, ref in inputs.items()
                if isinstance(ref, ArtifactRef) and name in upstream and upstream[name] != ref.digest]
    reasons += _changes(manifest["params"], material["params"].model_dump(mode="json"), "parameter")
    reasons += _changes(manifest["code"], material["code"], "code")
    reasons += _changes(manifest["versions"], material["versions"], "library")
    reasons += _changes(manifest["extra"], material["extra"], "input")
    return reasons


def _ran_on(manifest: dict) -> str:
    """What computed a cached artifact: its thread count can move a trained model as much as a
    seed does, and is not in the key (artifacts/stage.py `runtime`), so say it here."""
    ran = manifest.get("runtime")  # absent from artifacts made before it was recorded
    if not ran:
        return ""
    threads = f", {_counted(ran['torch_threads'], 'torch thread')}" if "torch_threads" in ran else ""
    return f", made on {_counted(ran['cpus'], 'CPU')}{threads}"


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class StepStatus(NamedTuple):
    """One step of the next run: cached (detail: its artifact) or not (detail: why it reruns)."""

    step: str
    cached: bool
    detail: str
    first: bool = False  # no earlier artifact of this step to compare with

    @property
    def line(self) -> str:
        if self.cached:
            return f"{self.step}: cached ({self.detail})"
        return f"{self.step}: would run ({self.detail})" if self.first else f"{self.step}: would run: {self.detail}"


def step_statuses(store: ArtifactStore, workload: str, data: str | None, smoke: bool, overrides: dict,
                  name: str | None = None) -> list[StepStatus]:
    """Every step of the run `workload` (the preset) under `name` would make, in DAG order."""
    config, _ = resolve(workload, data, smoke, overrides, store.root, name)
    last = last_manifests(store, config.name)
    found: list[StepStatus] = []

    def dry_run(step: str, stage: Stage, params: Any, **inputs: ArtifactRef | WouldRun) -> ArtifactRef | WouldRun:
        manifest = last.get(step)
        problem = "an upstream stage reruns"
        if not any(isinstance(ref, WouldRun) for ref in inputs.values()):
            hit = look_up(store, stage, stage.key(params, inputs), inputs)
            ref = hit.ref
            problem = "; ".join(hit.refused) or "no artifact made under these inputs"
            if ref is not None:
                if hit.origin == "record":
                    origin = ", found by an old Prefect cache record: the next run notes its key"
                elif hit.origin == "manifest":
                    origin = ", found by its manifest (made before key notes): the next run notes its key"
                elif manifest is not None and manifest["digest"] != ref.digest:
                    origin = ", made by an earlier run than the latest"
                else:
                    origin = ""
                found.append(StepStatus(step, True, f"artifact {ref.short}{origin}{_ran_on(store.manifest(ref))}"))
                return ref
        if manifest is None:
            found.append(StepStatus(step, False, f"no earlier artifact for workload {config.name!r}", first=True))
        else:
            found.append(StepStatus(step, False, "; ".join(_reasons(store, stage, params, inputs, manifest) or [problem])))
        return WouldRun(step)

    run_dag(config, dry_run, given=production_roles(production_run(store, config.name)))
    return found


def explain(store: ArtifactStore, workload: str, data: str | None, smoke: bool, overrides: dict,
            name: str | None = None) -> list[str]:
    """One line per step: `<step>: cached (...)` or `<step>: would run: <reasons>`."""
    return [status.line for status in step_statuses(store, workload, data, smoke, overrides, name)]
