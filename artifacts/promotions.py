"""Which run a workload serves: the `<name>/production` alias and its append-only promotion log.

`<name>/latest` names the newest successful run; `<name>/production` moves only when a
run is promoted: by the gate after a run (automatic) or by a person (`distillery
promote NAME RUN`, `distillery rollback NAME`). Every move is an entry in the log,
`promotions/<name>/<seq>.json` in the store (one object per entry, never rewritten, so
it works on S3 as on a folder): when, which run, what it replaced, by whom, and the
decision's figures. Production is a stack replayed from the log: a promotion pushes a
run, a rollback pops back to the one before.

Both verbs take the workload's promotion lock (the locks the cache uses: Redis for a
team, lock files alone), read the log, append, then move the alias, so two promotions
never interleave.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import time
from typing import Iterator

from artifacts.locks import lock_manager_for
from artifacts.runs import INT8_ROLE, RUN_KIND, RunRecord, read_run
from artifacts.store import ArtifactRef, ArtifactStore, StoreError

PRODUCTION = "production"
LOCK_WAIT_SECONDS = 60.0


def production_alias(name: str) -> str:
    return f"{name}/{PRODUCTION}"


def log_path(store: ArtifactStore, name: str) -> str:
    return f"{store.path}/promotions/{name}"


def entries(store: ArtifactStore, name: str) -> list[dict]:
    """The workload's promotion log, oldest first."""
    base = log_path(store, name)
    try:
        files = sorted(f for f in store.fs.find(base) if f.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for path in files:
        with store.fs.open(path, "r") as handle:
            out.append(json.loads(handle.read()))
    return sorted(out, key=lambda e: e["seq"])


def production_stack(log: list[dict]) -> list[str]:
    """Run digests, the production one last, replayed from the log."""
    stack: list[str] = []
    for entry in log:
        if entry["action"] == "promote":
            stack.append(entry["run"])
        elif entry["action"] == "rollback" and stack:
            stack.pop()
    return stack


def production_run(store: ArtifactStore, name: str) -> tuple[ArtifactRef, RunRecord] | None:
    """The run `<name>/production` names (its reference and record), or None when none was ever promoted."""
    try:
        ref = store.resolve_alias(production_alias(name))
    except StoreError:
        return None
    return ref, read_run(store, ref)


def logged_runs(store: ArtifactStore) -> set[str]:
    """Every run a promotion log names: kept by gc, since a rollback may return to any of them."""
    base = f"{store.path}/promotions"
    try:
        files = [f for f in store.fs.find(base) if f.endswith(".json")]
    except FileNotFoundError:
        return set()
    runs = set()
    for path in files:
        with store.fs.open(path, "r") as handle:
            runs.add(json.loads(handle.read())["run"])
    return runs


@contextlib.contextmanager
def promotion_lock(store: ArtifactStore, name: str) -> Iterator[None]:
    from artifacts.cache import holder_name

    locks = lock_manager_for(store)
    key, holder = f"promotion-{name}", holder_name()
    if not locks.acquire_lock(key, holder, acquire_timeout=LOCK_WAIT_SECONDS):
        raise StoreError(f"another promotion of {name!r} has held its lock for {LOCK_WAIT_SECONDS:.0f} s: try again")
    try:
        yield
    finally:
        try:
            locks.release_lock(key, holder)
        except ValueError:
            pass


def _append(store: ArtifactStore, name: str, entry: dict) -> dict:
    log = entries(store, name)
    entry = {"seq": len(log) + 1, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "workload": name, **entry}
    path = f"{log_path(store, name)}/{entry['seq']:08d}.json"
    if store.fs.exists(path):
        raise StoreError(f"promotion log entry {path} exists already: the log was written without the lock")
    store.fs.makedirs(log_path(store, name), exist_ok=True)
    with store.fs.open(path, "w") as handle:
        handle.write(json.dumps(entry, indent=2))
    return entry


def who(by: str) -> str:
    return by if by == "automatic" else f"hand:{getpass.getuser()}"


def check_promotable(name: str, record: RunRecord, digest: str) -> None:
    if record.workload != name:
        raise StoreError(f"run {digest[:12]} is a run of workload {record.workload!r}, not {name!r}: promote it as "
                         f"`distillery promote {record.workload} {digest[:12]}`")
    if INT8_ROLE not in record.roles:
        raise StoreError(f"run {digest[:12]} has no INT8 model (role {INT8_ROLE}): only a finished run can be promoted")


def promote(store: ArtifactStore, name: str, run: ArtifactRef, by: str = "automatic", decision: dict | None = None) -> dict:
    """Makes `run` the workload's production run; returns the log entry."""
    record = read_run(store, run)
    check_promotable(name, record, run.digest)
    _current_unless(store, name, run, record)  # refused before the lock is taken
    with promotion_lock(store, name):
        current = _current_unless(store, name, run, record)
        entry = _append(store, name, {"action": "promote", "run": run.digest, "replaced": current, "by": who(by),
                                      "decision": decision or {}})
        store.set_alias(production_alias(name), run)
    return entry


def _current_unless(store: ArtifactStore, name: str, run: ArtifactRef, record: RunRecord) -> str | None:
    """The current production run, unless it is `run` already or serves the same INT8 model (identical
    runs finishing together each ask to be promoted; the first one is)."""
    stack = production_stack(entries(store, name))
    current = stack[-1] if stack else None
    if current == run.digest:
        raise StoreError(f"run {run.digest[:12]} is already {name}'s production run")
    if current is not None and read_run(store, current).roles.get(INT8_ROLE) == record.roles.get(INT8_ROLE):
        raise StoreError(f"{name}'s production run {current[:12]} already serves the INT8 model of run {run.digest[:12]}")
    return current


def rollback(store: ArtifactStore, name: str, by: str = "hand") -> dict:
    """Returns production to the run before the current one; returns the log entry."""
    _rollback_target(store, name)  # refused before the lock is taken: a refusal leaves the store as it was
    with promotion_lock(store, name):
        current, target = _rollback_target(store, name)  # again: another promotion may have moved it meanwhile
        entry = _append(store, name, {"action": "rollback", "run": target, "replaced": current, "by": who(by),
                                      "decision": {}})
        store.set_alias(production_alias(name), ArtifactRef(kind=RUN_KIND, digest=target))
    return entry


def _rollback_target(store: ArtifactStore, name: str) -> tuple[str, str]:
    """(current production run, the one before it), or why there is none."""
    log = entries(store, name)
    if not log:
        raise StoreError(f"workload {name!r} has no promotion log in {store.root}: nothing was ever promoted, so "
                         f"there is nothing to roll back")
    stack = production_stack(log)
    if len(stack) < 2:
        raise StoreError(f"workload {name!r} has no earlier production run to roll back to "
                         f"(production is {stack[-1][:12] if stack else 'none'}, the first promoted)")
    return stack[-1], stack[-2]
