"""The cache command: python -m artifacts [--store ROOT] COMMAND (also `distillery list|verify|gc`)

  list                       every artifact: kind, stage, age, size, what points at it
  verify [--repair]          check every file of every artifact and every promotion log entry; --repair
                             deletes broken artifacts (their stages recompute on the next run) and moves
                             damaged log entries aside (to promotions-damaged/)
  gc [--delete]              artifacts no key note, old record, alias or downstream artifact needs, old
                             staging folders, checkpoints of finished or abandoned stages,
                             key notes of deleted artifacts; listed, deleted with --delete

Why a stage would or would not rerun needs the pipeline, which this package never imports:
that is `distillery status` (or `distillery explain`), with `distillery run`'s flags.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from artifacts.checkpoints import Checkpoints
from artifacts.edge import add_store_argument
from artifacts.lineage import age_seconds, entries, referenced, roots
from artifacts.records import record_keys
from artifacts.promotions import damaged_entries, move_aside
from artifacts.store import DIGEST_PATTERN, ArtifactStore, staging_in_use, staging_owner_file


def _size(n: int) -> str:
    return f"{n / 1e6:8.1f} MB"


def cmd_list(store: ArtifactStore, args: argparse.Namespace) -> int:
    known, pointed = entries(store), roots(store)
    needed = referenced(store, known)
    print(f"{'digest':<12}  {'kind':<8} {'stage':<18} {'published':<20} {'size':>11}  referenced by")
    for e in sorted(known.values(), key=lambda e: e.published):
        by = pointed.get(e.digest) or ("upstream of a kept artifact" if e.digest in needed else "nothing")
        print(f"{e.digest[:12]}  {e.kind:<8} {e.stage:<18} {e.published:<20} {_size(e.size_bytes)}  {by}")
    print(f"{len(known)} artifacts, {_size(sum(e.size_bytes for e in known.values())).strip()}, in {store.root}")
    return 0


def cmd_verify(store: ArtifactStore, args: argparse.Namespace) -> int:
    digests, bad = store.digests(), 0
    for digest in digests:
        check = store.verify(digest)
        if check.problem == "missing":  # no manifest: an upload in progress (or abandoned: gc's job), never deleted here
            print(f"INCOMPLETE {digest[:12]}: no manifest yet; left alone (an upload may be in progress)")
            continue
        if not check.ok:
            bad += 1
            print(f"BROKEN {digest[:12]}: {check.problem}" + ("; deleted" if args.repair else ""))
            if args.repair:
                store.remove(digest)
    print(f"{len(digests)} artifacts checked, {bad} broken")
    damaged = damaged_entries(store)
    for path, problem in damaged:
        if args.repair:
            problem += f"; moved aside to {move_aside(store, path)}"
        print(f"BROKEN promotion log entry {path}: {problem}")
    bad += len(damaged)
    return 1 if bad and not args.repair else 0


def cmd_gc(store: ArtifactStore, args: argparse.Namespace) -> int:
    known = entries(store)
    keep = referenced(store, known)
    min_age = args.min_age_minutes * 60
    # Young artifacts may belong to a run that has published but not yet recorded them.
    doomed = [e for d, e in known.items() if d not in keep and age_seconds(e.published) > min_age]
    verb = "deleted" if args.delete else "would delete"
    for e in doomed:
        print(f"{verb} {e.digest[:12]} {e.kind} {e.stage} ({_size(e.size_bytes).strip()}, unreferenced)")
        if args.delete:
            store.remove(e.digest)
    stale = []
    if store.is_local:
        staging = Path(store.path) / "staging"
        folders = [p for p in staging.glob("*") if p.is_dir()] if staging.exists() else []
        # A folder a live process builds in stays, however long its stage has run.
        stale = [p for p in folders if time.time() - p.stat().st_mtime > min_age and not staging_in_use(p)]
        for folder in stale:
            print(f"{verb} staging/{folder.name} (left by an interrupted run)")
            if args.delete:
                shutil.rmtree(folder, ignore_errors=True)
                staging_owner_file(folder).unlink(missing_ok=True)
    # Uploads that never finished (no manifest), once older than min_age: on S3 nothing else removes them.
    changed = {d: store.last_modified(d) for d in store.digests() if d not in known}
    unfinished = [d for d, at in changed.items() if at is not None and time.time() - at > min_age]
    for digest in unfinished:
        print(f"{verb} {digest[:12]} (an upload that never finished: no manifest)")
        if args.delete:
            store.remove(digest)
    finished = set(store.noted_keys()) | set(record_keys(store))
    checkpoints = []
    for folder in _checkpoint_folders(store):
        key = folder.rstrip("/").rsplit("/", 1)[-1]
        age = time.time() - Checkpoints(store, key).saved_at()
        # Kept while a crashed run may still resume from it; gone once its stage is cached.
        if key in finished or age > args.checkpoint_days * 86400:
            checkpoints.append(folder)
            print(f"{verb} checkpoints/{key[:12]} ({'its stage is cached' if key in finished else 'abandoned'})")
            if args.delete:
                store.fs.rm(folder, recursive=True)
    # Key notes (artifacts/cache.py) of artifacts deleted now or before: they would only be checked and refused.
    gone = {e.digest for e in doomed}
    notes = []
    for key in store.noted_keys():
        ref = store.made_under(key, signed=False)
        if ref is None or ref.digest in gone or ref.digest not in known:
            notes.append(key)
            if args.delete:
                store.forget_key(key)
    freed = sum(e.size_bytes for e in doomed)
    print(f"{verb} {len(doomed)} artifacts ({_size(freed).strip()}), {len(stale)} staging folders, "
          f"{len(unfinished)} unfinished uploads, {len(checkpoints)} checkpoints and {len(notes)} key notes; kept {len(keep & set(known))} artifacts")
    return 0


def _checkpoint_folders(store: ArtifactStore) -> list[str]:
    try:
        return [p for p in store.fs.ls(f"{store.path}/checkpoints", detail=False) if DIGEST_PATTERN.match(p.rstrip("/").rsplit("/", 1)[-1])]
    except FileNotFoundError:
        return []


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repair", action="store_true", help="delete broken artifacts so they are recomputed")


def _gc_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delete", action="store_true", help="delete; without it, only list")
    parser.add_argument("--min-age-minutes", type=float, default=60, help="never touch artifacts or staging folders younger than this")
    parser.add_argument("--checkpoint-days", type=float, default=7, help="delete checkpoints of unfinished stages older than this")


# command -> (what runs it, one line of help, what adds its arguments)
COMMANDS = {
    "list": (cmd_list, "list artifacts, their sizes and what references each", _no_arguments),
    "verify": (cmd_verify, "check every artifact's checksums", _verify_arguments),
    "gc": (cmd_gc, "delete what nothing references", _gc_arguments),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m artifacts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, add_arguments) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][0](ArtifactStore(args.store), args)


def command_main(command: str, argv: list[str] | None, prog: str) -> int:
    """One command as a program of its own, its --store among its options (`distillery gc --store ROOT`)."""
    run, help_text, add_arguments = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=prog, description=help_text[0].upper() + help_text[1:] + ".",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_store_argument(parser)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(ArtifactStore(args.store), args)


if __name__ == "__main__":
    sys.exit(main())
