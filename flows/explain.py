"""Why each stage would, or would not, rerun (`python -m artifacts explain`).

For every stage it takes the artifact the workload made last (following the
`<workload>/latest` alias up its lineage), works out the key the next run would use
from the same upstream artifacts, and names every input that differs: a parameter,
a code module, a library version, a source file, or an upstream stage that reruns.
"""

from __future__ import annotations

from typing import Any

from artifacts.keys import cache_key
from artifacts.lineage import entries
from artifacts.records import RecordError, read_record
from artifacts.store import ArtifactRef, ArtifactStore, StoreError
from flows.config import SECTIONS
from flows.pipeline import STAGES, resolve


def last_manifests(store: ArtifactStore, name: str) -> dict[str, dict]:
    """Stage name -> manifest of the artifact it made for the workload's latest run."""
    try:
        start = store.resolve_alias(f"{name}/latest").digest
    except StoreError:
        return {}
    found: dict[str, dict] = {}
    pending = [start]
    while pending:
        digest = pending.pop()
        try:
            manifest = store.manifest(digest)
        except FileNotFoundError:
            continue
        found.setdefault(manifest["stage"], manifest)
        pending.extend(manifest.get("upstream", {}).values())
    reports = [e for e in entries(store).values() if e.stage == "evaluate" and start in e.upstream.values()]
    if reports:
        found["evaluate"] = store.manifest(max(reports, key=lambda e: e.published).digest)
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


def explain(store: ArtifactStore, workload: str, data: str | None, smoke: bool, overrides: dict) -> list[str]:
    config, _ = resolve(workload, data, smoke, overrides, store.root)
    last = last_manifests(store, config.name)
    producers = {m["digest"]: stage for stage, m in last.items()}
    reruns: set[str] = set()
    lines = []
    for stage in STAGES:
        section = next(s for s in SECTIONS if isinstance(getattr(config, s), stage.params))
        manifest = last.get(stage.name)
        if manifest is None:
            reruns.add(stage.name)
            lines.append(f"{stage.name}: would run (no earlier artifact for workload {config.name!r})")
            continue
        inputs = {name: ArtifactRef(kind=store.manifest(d)["kind"] if store.verify(d).ok else "missing", digest=d)
                  for name, d in manifest["upstream"].items()}
        material = stage.key_material(getattr(config, section), inputs)
        reasons = [f"upstream {producers[d]} reruns" for d in manifest["upstream"].values() if producers.get(d) in reruns]
        reasons += _changes(manifest["params"], material["params"].model_dump(mode="json"), "parameter")
        reasons += _changes(manifest["code"], material["code"], "code")
        reasons += _changes(manifest["versions"], material["versions"], "library")
        reasons += _changes(manifest["extra"], material["extra"], "input")
        if not reasons:
            key = cache_key(**material)
            try:
                ref = read_record(store, key)
                problem = store.verify(ref).problem
            except FileNotFoundError:
                problem = "its cache record is gone"
            except RecordError as exc:
                problem = str(exc)
            if problem:
                reasons.append(problem)
        if reasons:
            reruns.add(stage.name)
            lines.append(f"{stage.name}: would run: " + "; ".join(reasons))
        else:
            lines.append(f"{stage.name}: cached (artifact {manifest['digest'][:12]})")
    return lines
