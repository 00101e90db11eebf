"""Lineage: which artifacts lead to which, and which are still referenced.

Every manifest names its upstream digests, so the store holds the whole graph; no
database is needed to answer "what made this model" or "what may be deleted".
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass

from artifacts.promotions import logged_runs
from artifacts.records import RecordError, read_record, record_keys
from artifacts.store import ArtifactStore


@dataclass(frozen=True)
class Entry:
    digest: str
    kind: str
    stage: str
    published: str
    size_bytes: int
    upstream: dict[str, str]


def entries(store: ArtifactStore) -> dict[str, Entry]:
    """Every artifact whose manifest is readable, by digest."""
    found = {}
    for digest in store.digests():
        try:
            manifest = store.manifest(digest)
        except (FileNotFoundError, ValueError):
            continue
        found[digest] = Entry(
            digest=digest,
            kind=manifest.get("kind", "?"),
            stage=manifest.get("stage", "?"),
            published=manifest.get("published", ""),
            size_bytes=sum(manifest.get("sizes", {}).values()),
            upstream=dict(manifest.get("upstream", {})),
        )
    return found


def roots(store: ArtifactStore) -> dict[str, str]:
    """Artifacts something points at: digest -> what (an alias, a key note or an old cache record)."""
    pointed: dict[str, str] = {}
    for name in store.aliases():
        try:
            pointed.setdefault(store.resolve_alias(name).digest, f"alias {name}")
        except Exception:
            continue
    for digest in logged_runs(store):  # a rollback may return to any run a promotion log names
        pointed.setdefault(digest, "promotion log")
    for key in store.noted_keys():
        ref = store.made_under(key, signed=False)
        if ref is not None:
            pointed.setdefault(ref.digest, f"key {key[:12]}")
    for key in record_keys(store):
        try:
            pointed.setdefault(read_record(store, key).digest, f"record {key[:12]}")
        except (RecordError, FileNotFoundError):
            continue
    return pointed


def referenced(store: ArtifactStore, known: dict[str, Entry] | None = None) -> set[str]:
    """Roots plus everything upstream of them."""
    known = entries(store) if known is None else known
    keep, pending = set(), list(roots(store))
    while pending:
        digest = pending.pop()
        if digest in keep:
            continue
        keep.add(digest)
        if digest in known:
            pending.extend(known[digest].upstream.values())
    return keep


def age_seconds(published: str) -> float:
    try:
        return time.time() - calendar.timegm(time.strptime(published, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return float("inf")
