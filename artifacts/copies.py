"""This machine's copies of remote artifacts, kept within a size bound.

Every reader of a remote store (a worker, `serve`, `predict`) keeps a verified copy of each
artifact it opened under the machine cache (artifacts/store.py `machine_cache`). Without a
bound a worker's disk fills. After each download the least recently used copies are
removed until the copies fit `DISTILLERY_CACHE_MAX_GB` (default 20 GB); a copy is fetched
again if it is needed later.

A copy in use is never removed: a process that opens a copy holds a shared lock on
`<digest>.lock` for as long as it lives (fcntl locks die with their process, so a killed
reader leaves nothing behind), and eviction takes each candidate's lock exclusively without
waiting, skipping any copy another process holds. A reader that opens a copy while it is
being evicted waits for the eviction to finish, then fetches it again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

from artifacts.names import DIGEST_PATTERN, StoreError

MAX_GB_ENV = "DISTILLERY_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0

_held: dict[tuple[str, str], int] = {}  # (cache folder, digest) -> fd of the shared lock this process holds


def max_bytes() -> int:
    raw = os.environ.get(MAX_GB_ENV, "")
    try:
        gb = float(raw) if raw else DEFAULT_MAX_GB
    except ValueError:
        gb = -1.0
    if not gb > 0:
        raise StoreError(f"{MAX_GB_ENV}={raw!r}: give the machine cache's size bound in GB, above 0 (default {DEFAULT_MAX_GB:g})")
    return int(gb * 1e9)


def _lock_file(cache: Path, digest: str) -> Path:
    return cache / f"{digest}.lock"


def hold(cache: Path, digest: str) -> None:
    """Marks the copy of `digest` in use by this process until it ends (waits out an eviction in progress)."""
    if (str(cache), digest) in _held:
        touch(cache, digest)
        return
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(_lock_file(cache, digest), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _held[(str(cache), digest)] = fd
    touch(cache, digest)


def touch(cache: Path, digest: str) -> None:
    """Records a use of the copy (the `.lock` file's modification time orders eviction)."""
    try:
        os.utime(_lock_file(cache, digest))
    except FileNotFoundError:
        _lock_file(cache, digest).touch()


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def copies(cache: Path) -> list[tuple[float, str, int]]:
    """(last use, digest, bytes) of every copy in the cache, least recently used first."""
    found = []
    for folder in cache.iterdir() if cache.is_dir() else []:
        if folder.is_dir() and DIGEST_PATTERN.match(folder.name):
            lock = _lock_file(cache, folder.name)
            used = lock.stat().st_mtime if lock.exists() else folder.stat().st_mtime
            found.append((used, folder.name, _size(folder)))
    return sorted(found)


def evict(cache: Path, keep: str = "", bound: int | None = None) -> list[str]:
    """Removes least recently used copies not in use until the cache fits `bound`; returns their digests."""
    bound = max_bytes() if bound is None else bound
    present = copies(cache)
    total = sum(size for _, _, size in present)
    removed = []
    for _, digest, size in present:
        if total <= bound:
            break
        if digest == keep or (str(cache), digest) in _held:
            continue
        fd = os.open(_lock_file(cache, digest), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another process is using it
            folder = cache / digest
            doomed = cache / f"{digest}.{uuid.uuid4().hex}.evicting"
            try:
                os.rename(folder, doomed)  # gone for readers at once; the bytes go after
            except FileNotFoundError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            total -= size
            removed.append(digest)
        finally:
            os.close(fd)  # releases the lock
    return removed
