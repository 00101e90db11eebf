"""Locks for stage keys, held as leases: renewed while the holder works, lapsing soon
after it dies.

Prefect's transactions lock a cache key while a stage computes, so identical runs
compute it once. Prefect passes no hold timeout, so its locks never expire: a worker
killed mid-stage would block that stage forever. A fixed timeout would instead let a
second run start a long training the first is still doing. A lease, renewed by a
background thread while the holder lives, gives both.

Two kinds: files in a folder (one machine, or a shared local store), and Redis (many
machines sharing one store), chosen by `lock_manager_for`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

from prefect.locking.filesystem import FileSystemLockManager
from prefect.types._datetime import now

from artifacts.store import ArtifactStore, StoreError

LEASE_SECONDS = 60.0
log = logging.getLogger("distillery.locks")


class _Renewals:
    """Background renewal of held leases; `renew(key, holder)` must extend one lease."""

    def __init__(self, interval: float, renew: Callable[[str, str], None]):
        self.interval = interval
        self.renew = renew
        self.stops: dict[tuple[str, str], threading.Event] = {}
        # Serializes renewals with release, so a renewal never resurrects a released lock.
        self.mutex = threading.Lock()

    def start(self, key: str, holder: str) -> None:
        if (key, holder) in self.stops:
            return
        stop = threading.Event()
        self.stops[(key, holder)] = stop
        threading.Thread(target=self._loop, args=(key, holder, stop), daemon=True).start()

    def stop(self, key: str, holder: str) -> None:
        stop = self.stops.pop((key, holder), None)
        if stop is not None:
            stop.set()

    def _loop(self, key: str, holder: str, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            with self.mutex:
                if stop.is_set():
                    return
                self.renew(key, holder)


class LeaseLockManager(FileSystemLockManager):
    """Lock files holding an expiry that the holder keeps pushing forward."""

    def __init__(self, lock_files_directory: Path, lease_seconds: float = LEASE_SECONDS):
        super().__init__(Path(lock_files_directory))
        self.lease_seconds = lease_seconds
        self._renewals = _Renewals(lease_seconds / 3, self._extend)

    def __deepcopy__(self, memo: dict) -> "LeaseLockManager":
        return self  # a handle on shared lock files, not a value to copy

    def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None, hold_timeout: Optional[float] = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout or self.lease_seconds)
        if acquired:
            self._renewals.start(key, holder)
        return acquired

    def release_lock(self, key: str, holder: str) -> None:
        with self._renewals.mutex:
            self._renewals.stop(key, holder)
            super().release_lock(key, holder)

    def _extend(self, key: str, holder: str) -> None:
        path = self._lock_path_for_key(key)
        expiration = now("UTC") + timedelta(seconds=self.lease_seconds)
        tmp = path.with_suffix(f".{os.getpid()}.renew")
        tmp.write_text(json.dumps({"holder": holder, "expiration": str(expiration)}))
        os.replace(tmp, path)  # readers never see a half-written lock file
        cached = self._locks.get(key)
        if cached is not None:
            cached["expiration"] = expiration


# Compare-and-act scripts: only the holder may extend or release its lease.
_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLeaseLockManager:
    """Leases as Redis keys with a time-to-live: shared by every worker that reaches the server."""

    def __init__(self, url: str, lease_seconds: float = LEASE_SECONDS, prefix: str = "distillery:lock:"):
        import redis

        self.url = url
        self.lease_seconds = lease_seconds
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self._renewals = _Renewals(lease_seconds / 3, self._extend)

    def __deepcopy__(self, memo: dict) -> "RedisLeaseLockManager":
        return self

    def _name(self, key: str) -> str:
        return self.prefix + key

    def _extend(self, key: str, holder: str) -> None:
        self.client.eval(_EXTEND, 1, self._name(key), holder, int(self.lease_seconds * 1000))

    def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None, hold_timeout: Optional[float] = None) -> bool:
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        lease_ms = int((hold_timeout or self.lease_seconds) * 1000)
        while True:
            if self.client.set(self._name(key), holder, nx=True, px=lease_ms) or self.is_lock_holder(key, holder):
                self._renewals.start(key, holder)
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None, hold_timeout: Optional[float] = None) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._renewals.mutex:
            self._renewals.stop(key, holder)
            if not self.client.eval(_RELEASE, 1, self._name(key), holder):
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        return bool(self.client.exists(self._name(key)))

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return self.client.get(self._name(key)) == holder

    def wait_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    async def await_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        return self.wait_for_lock(key, timeout)


def lease_seconds_from_env() -> float:
    """DISTILLERY_LOCK_LEASE_SECONDS, or the default: how long a dead holder's lock blocks others."""
    raw = os.environ.get("DISTILLERY_LOCK_LEASE_SECONDS")
    if raw is None:
        return LEASE_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds >= 3:  # renewed every third of the lease: under 3 s, a busy holder could miss its renewal
        raise StoreError(f"DISTILLERY_LOCK_LEASE_SECONDS={raw!r}: give a number of seconds, at least 3 "
                         f"(default {LEASE_SECONDS:.0f})")
    return seconds


def lock_manager_for(store: ArtifactStore):
    """Redis when DISTILLERY_LOCKS names a server (needed when machines share a store);
    otherwise lock files, in the store when it is local."""
    lease = lease_seconds_from_env()
    url = os.environ.get("DISTILLERY_LOCKS")
    if url:
        return RedisLeaseLockManager(url, lease)
    if not store.is_local:
        log.warning("store %s is shared but DISTILLERY_LOCKS is unset: stage locks hold on this machine only", store.root)
    return LeaseLockManager(store.locks_path, lease)
