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
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

from artifacts.locks import lock_manager_for
from artifacts.runs import INT8_ROLE, RUN_KIND, RunRecord, read_run
from artifacts.names import digest_problem
from artifacts.signing import checked, sign
from artifacts.store import ArtifactRef, ArtifactStore, NoAlias, StoreError

PRODUCTION = "production"
LOCK_WAIT_SECONDS = 60.0


def production_alias(name: str) -> str:
    return f"{name}/{PRODUCTION}"


def log_path(store: ArtifactStore, name: str) -> str:
    return f"{store.path}/promotions/{name}"


ENTRY_NAME = re.compile(r"^(\d{8})\.json$")
ACTIONS = ("promote", "rollback")


class DamagedEntry(StoreError):
    """A promotion log entry that cannot be read: promotions stop until it is repaired."""


def _entry_files(store: ArtifactStore, base: str) -> list[str]:
    if store.is_local:  # names only: a walk that stats each file races with a writer's temporary file
        try:
            return sorted(f"{base}/{n}" for n in os.listdir(base) if ENTRY_NAME.match(n))
        except FileNotFoundError:
            return []
    try:
        files = store.fs.find(base)
    except FileNotFoundError:
        return []
    # Only `<seq>.json` directly in the log's folder: a temporary file of a write in progress is no entry.
    folder = base.split("://", 1)[-1].strip("/")
    return sorted(f for f in files if f.rsplit("/", 1)[0].strip("/") == folder and ENTRY_NAME.match(f.rsplit("/", 1)[-1]))


def read_entry(store: ArtifactStore, path: str) -> dict:
    """One log entry, checked as an attacker would craft it: JSON, its fields, its place, its signature."""
    repair = (f"move it aside with `distillery verify --repair --store {store.root}` (production then replays "
              f"without it; check `distillery promotions` afterwards), or restore it from a backup")
    try:
        with store.fs.open(path, "r") as handle:
            entry = json.loads(handle.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedEntry(f"promotion log entry {path} is damaged ({type(exc).__name__}: {exc}); {repair}") from None
    seq = int(ENTRY_NAME.match(path.rsplit("/", 1)[-1]).group(1))
    entry = checked(entry, f"promotion:{path.rsplit('/', 2)[-2]}/{seq}", f"promotion log entry {path}")
    problem = ""
    if not isinstance(entry, dict):
        problem = "it is not a JSON object"
    elif entry.get("seq") != seq:
        problem = f"its seq {entry.get('seq')!r} is not its file's number {seq}"
    elif entry.get("action") not in ACTIONS:
        problem = f"its action {entry.get('action')!r} is not one of {ACTIONS}"
    elif digest_problem(entry.get("run"), "run"):
        problem = digest_problem(entry.get("run"), "run")
    if problem:
        raise DamagedEntry(f"promotion log entry {path} is damaged: {problem}; {repair}")
    return entry


def entries(store: ArtifactStore, name: str) -> list[dict]:
    """The workload's promotion log, oldest first; DamagedEntry names a file that cannot be read."""
    return sorted((read_entry(store, path) for path in _entry_files(store, log_path(store, name))), key=lambda e: e["seq"])


def damaged_entries(store: ArtifactStore) -> list[tuple[str, str]]:
    """(path, problem) of every log entry that cannot be read, in every workload's log."""
    found = []
    for path in _all_entry_files(store):
        try:
            read_entry(store, path)
        except StoreError as exc:
            found.append((path, str(exc)))
    return found


def move_aside(store: ArtifactStore, path: str) -> str:
    """Moves a damaged entry out of the log, to promotions-damaged/ (kept for a person to read)."""
    prefix = f"{store.path}/promotions/".split("://", 1)[-1].lstrip("/")
    relative = path.split("://", 1)[-1].lstrip("/")[len(prefix):]  # <workload>/<seq>.json
    target = f"{store.path}/promotions-damaged/{relative}.{uuid.uuid4().hex[:8]}"
    store.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    store.fs.mv(path, target)
    return target


def _all_entry_files(store: ArtifactStore) -> list[str]:
    base = f"{store.path}/promotions"
    try:
        files = store.fs.find(base)
    except FileNotFoundError:
        return []
    return sorted(f for f in files if ENTRY_NAME.match(f.rsplit("/", 1)[-1]))


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
    except NoAlias:  # only a missing alias means "none": one that fails its checks is an error, never "no champion"
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
        if not ENTRY_NAME.match(path.rsplit("/", 1)[-1]):
            continue
        try:
            runs.add(read_entry(store, path)["run"])
        except StoreError:
            continue  # gc keeps going; `distillery verify` reports the damaged entry
    return runs


@contextlib.contextmanager
def promotion_lock(store: ArtifactStore, name: str) -> Iterator[None]:
    from artifacts.cache import holder_name

    locks = lock_manager_for(store)
    key, holder = f"promotion-{name}", holder_name()
    try:
        acquired = locks.acquire_lock(key, holder, acquire_timeout=LOCK_WAIT_SECONDS)
    except Exception as exc:  # the lock server (Redis) unreachable, refusing, timing out
        raise StoreError(f"the promotion lock of {name!r} cannot be taken: the lock server failed "
                         f"({type(exc).__name__}: {exc}); production is unchanged. Check DISTILLERY_LOCKS and "
                         f"the Redis server, then try again") from None
    if not acquired:
        raise StoreError(f"another promotion of {name!r} has held its lock for {LOCK_WAIT_SECONDS:.0f} s: try again")
    try:
        yield
    finally:
        try:
            locks.release_lock(key, holder)
        except ValueError:
            pass
        except Exception as exc:  # the lease expires by itself; what was done under it stands
            print(f"warning: the promotion lock of {name!r} was not released ({type(exc).__name__}: {exc}); "
                  f"it expires by itself", file=sys.stderr)


def _append(store: ArtifactStore, name: str, entry: dict) -> dict:
    """Writes the next entry whole under a fresh name (call under the promotion lock)."""
    log = entries(store, name)
    seq = max((e["seq"] for e in log), default=0) + 1  # not len(log): an entry moved aside leaves a gap
    entry = {"seq": seq, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "workload": name, **entry}
    path = f"{log_path(store, name)}/{seq:08d}.json"
    body = json.dumps(sign(entry, f"promotion:{name}/{seq}"), indent=2)
    if store.fs.exists(path):
        raise StoreError(f"promotion log entry {path} exists already: the log was written without the lock")
    if store.is_local:
        # Written beside, then linked in: the entry appears complete or not at all, and never over another.
        folder = Path(log_path(store, name))
        folder.mkdir(parents=True, exist_ok=True)
        # Beside the store's other work in progress, not in the log's folder, whose readers list it.
        scratch = Path(store.path) / "staging"
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = scratch / f"promotion-{name}-{seq:08d}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(body)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise StoreError(f"promotion log entry {path} exists already: the log was written without the lock") from None
        finally:
            tmp.unlink(missing_ok=True)
    else:
        store.fs.pipe_file(path, body.encode())  # one PUT: an object store shows the whole object or none
    return entry


def who(by: str) -> str:
    return by if by == "automatic" else f"hand:{getpass.getuser()}"


def check_promotable(name: str, record: RunRecord, digest: str) -> None:
    if record.workload != name:
        raise StoreError(f"run {digest[:12]} is a run of workload {record.workload!r}, not {name!r}: promote it as "
                         f"`distillery promote {record.workload} {digest[:12]}`")
    if INT8_ROLE not in record.roles:
        raise StoreError(f"run {digest[:12]} has no INT8 model (role {INT8_ROLE}): only a finished run can be promoted")


class RolledBack(StoreError):
    """The run's INT8 model was rolled back out of production: never promoted again automatically."""


def rolled_back(store: ArtifactStore, name: str, log: list[dict] | None = None) -> dict[str, dict]:
    """The INT8 models rolled back out of `name`'s production (by digest): the rollback entry of each.

    By model, not by run record: a rerun with the same inputs makes a new record (its own time)
    around the same cached model, and it must not come back by itself."""
    found = {}
    for entry in entries(store, name) if log is None else log:
        if entry["action"] == "rollback" and entry.get("replaced"):
            found[read_run(store, entry["replaced"]).role(INT8_ROLE).digest] = entry
    return found


def rolled_back_reason(name: str, entry: dict) -> str:
    return (f"its INT8 model was rolled back out of {name}'s production (run {entry['replaced'][:12]}, log entry "
            f"{entry['seq']}, {entry['at']}, by {entry['by']}), so it is not promoted automatically again")


class ProductionMoved(StoreError):
    """Production is no longer the run a decision was judged against: the decision is stale."""


def promote(store: ArtifactStore, name: str, run: ArtifactRef, by: str = "automatic", decision: dict | None = None) -> dict:
    """Makes `run` the workload's production run; returns the log entry.

    An automatic promotion is a compare-and-swap: `decision["production_run"]` is the run it
    was judged against (None: there was none), and under the lock it is refused if production
    is another run by then. A promotion by hand is a person's choice and needs no decision."""
    record = read_run(store, run)
    check_promotable(name, record, run.digest)
    _current_unless(store, name, run, record)  # refused before the lock is taken
    with promotion_lock(store, name):
        current = _current_unless(store, name, run, record)
        if by == "automatic":
            rolled = rolled_back(store, name).get(record.roles[INT8_ROLE].digest)
            if rolled is not None:
                raise RolledBack(f"{rolled_back_reason(name, rolled)}; promote it by hand if it is wanted again: "
                                 f"`distillery promote {name} {run.digest[:12]}`")
            judged_against = (decision or {}).get("production_run")
            if current != judged_against:
                raise ProductionMoved(
                    f"{name}'s production moved while run {run.digest[:12]} was judged: it was judged against "
                    f"{judged_against[:12] if judged_against else 'no production run'}, and production is now "
                    f"{current[:12] if current else 'none'}; not promoted. Rerun to judge it against the new "
                    f"production model, or promote it by hand: `distillery promote {name} {run.digest[:12]}`")
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
