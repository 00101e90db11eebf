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

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

from artifacts.store import ArtifactStore, StoreError

LEASE_SECONDS = 60.0
REDIS_TIMEOUT_SECONDS = 5.0
LOCAL_LOCKS = "local"  # DISTILLERY_LOCKS=local: lock files on this machine, for a shared store one worker uses
POLL_SECONDS = 0.1
log = logging.getLogger("distillery.locks")


class _Renewals:
    """Background renewal of held leases; `renew(key, holder)` extends one lease and says
    whether the holder still had it.

    A renewal that fails (a Redis timeout, a network blip) is retried at the next tick:
    renewing every third of the lease leaves two more tries before it lapses. A renewal
    that finds the lease gone or taken (the holder paused past its lease) marks it lost
    and stops: the holder must not publish (`_Leases.still_held`).
    """

    def __init__(self, interval: float, renew: Callable[[str, str], bool]):
        self.interval = interval
        self.renew = renew
        self.stops: dict[tuple[str, str], threading.Event] = {}
        self.lost: set[tuple[str, str]] = set()
        # Serializes renewals with release, so a renewal never resurrects a released lock.
        self.mutex = threading.Lock()

    def start(self, key: str, holder: str) -> None:
        if (key, holder) in self.stops:
            return
        stop = threading.Event()
        self.stops[(key, holder)] = stop
        self.lost.discard((key, holder))
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
                try:
                    held = self.renew(key, holder)
                except Exception as exc:  # noqa: BLE001 - any backend error: try again next tick
                    log.warning("renewing the lock on %s failed (%s); retrying in %.1f s", key[:12], exc, self.interval)
                    continue
                if not held:
                    log.error("the lock on %s was lost (its lease lapsed, or another holder took it): "
                              "this holder will not publish", key[:12])
                    self.lost.add((key, holder))
                    return


class _Leases:
    """What Prefect's LockManager protocol asks beyond taking, releasing and reading a lease."""

    lease_seconds: float

    def __deepcopy__(self, memo: dict) -> "_Leases":
        return self  # a handle on shared locks, not a value to copy

    def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                     hold_timeout: Optional[float] = None) -> bool:
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        lease = hold_timeout or self.lease_seconds
        while not self._take(key, holder, lease):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        self._renewals.start(key, holder)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                            hold_timeout: Optional[float] = None) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._renewals.mutex:
            self._renewals.stop(key, holder)
            if not self._give_back(key, holder):
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")

    def wait_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    async def await_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        return self.wait_for_lock(key, timeout)

    def still_held(self, key: str, holder: str) -> bool:
        """Whether holder still holds the lease: asked of the backend before publishing,
        since a renewal thread that was paused with its process cannot have noticed."""
        return (key, holder) not in self._renewals.lost and self.is_lock_holder(key, holder)


class _Lease(NamedTuple):
    holder: str
    expires: float  # time.time(): the lock files are shared between processes


class LeaseLockManager(_Leases):
    """Lock files holding a holder and an expiry that the holder keeps pushing forward.

    Not Prefect's FileSystemLockManager: it creates a lock file empty and fills it
    after, so a run starting beside another could parse the empty file and fail
    ("EOF while parsing", one of three identical concurrent runs); and two runs
    waiting on a dead holder could each delete its expired lock, the second deleting
    the lease the first had just taken. Here each take, renewal and release decides
    under an flock on one guard file, and every write is a rename, so a reader sees
    a whole lock file or none.
    """

    def __init__(self, lock_files_directory: Path, lease_seconds: float = LEASE_SECONDS):
        self.directory = Path(lock_files_directory)
        self.lease_seconds = lease_seconds
        self._renewals = _Renewals(lease_seconds / 3, self._extend)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.lock"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".guard", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes, or its process dies
            yield

    def _read(self, key: str) -> Optional[_Lease]:
        """The live lease on key, or None: absent, lapsed, or not one of ours (a file
        left by Prefect's own lock manager in an older store is treated as lapsed)."""
        try:
            data = json.loads(self._path(key).read_text())
            lease = _Lease(str(data["holder"]), float(data["expires"]))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return lease if lease.expires >= time.time() else None

    def _write(self, key: str, holder: str, lease_seconds: float) -> None:
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"holder": holder, "expires": time.time() + lease_seconds}))
        os.replace(tmp, path)

    def _take(self, key: str, holder: str, lease_seconds: float) -> bool:
        with self._guard():
            current = self._read(key)
            if current is not None and current.holder != holder:
                return False
            self._write(key, holder, lease_seconds)
            return True

    def _extend(self, key: str, holder: str) -> bool:
        with self._guard():
            current = self._read(key)
            if current is None or current.holder != holder:
                return False
            self._write(key, holder, self.lease_seconds)
            return True

    def _give_back(self, key: str, holder: str) -> bool:
        with self._guard():
            current = self._read(key)
            if current is None or current.holder != holder:
                return False
            self._path(key).unlink()
            return True

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        return self._read(key) is not None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        current = self._read(key)
        return current is not None and current.holder == holder


# Compare-and-act scripts: only the holder may extend or release its lease.
_EXTEND = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLeaseLockManager(_Leases):
    """Leases as Redis keys with a time-to-live: shared by every worker that reaches the server."""

    def __init__(self, url: str, lease_seconds: float = LEASE_SECONDS, prefix: str = "distillery:lock:"):
        import redis

        self.url = url
        self.lease_seconds = lease_seconds
        self.prefix = prefix
        # Timeouts: a Redis that stops answering must fail a call (and its renewal be retried),
        # not hang a worker, or its renewal thread, forever.
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                           socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._renewals = _Renewals(lease_seconds / 3, self._extend)

    def _name(self, key: str) -> str:
        return self.prefix + key

    def _take(self, key: str, holder: str, lease_seconds: float) -> bool:
        return bool(self.client.set(self._name(key), holder, nx=True, px=int(lease_seconds * 1000))
                    or self.is_lock_holder(key, holder))

    def _extend(self, key: str, holder: str) -> bool:
        return bool(self.client.eval(_EXTEND, 1, self._name(key), holder, int(self.lease_seconds * 1000)))

    def _give_back(self, key: str, holder: str) -> bool:
        return bool(self.client.eval(_RELEASE, 1, self._name(key), holder))

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        return bool(self.client.exists(self._name(key)))

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return self.client.get(self._name(key)) == holder


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
    lock files for a local store, or for a remote one when DISTILLERY_LOCKS=local says on
    purpose that one machine uses it. A remote store with no lock server named is refused:
    falling back to this machine's files would let two workers train the same stage."""
    lease = lease_seconds_from_env()
    url = os.environ.get("DISTILLERY_LOCKS", "")
    if url and url != LOCAL_LOCKS:
        return RedisLeaseLockManager(url, lease)
    if not store.is_local and url != LOCAL_LOCKS:
        raise StoreError(f"store {store.root} is remote but no lock server is named: set DISTILLERY_LOCKS to the "
                         f"team's Redis (redis://[:password@]host:6379/0, deployments/stack.sh prints it), or "
                         f"DISTILLERY_LOCKS={LOCAL_LOCKS} if only this machine works on the store")
    return LeaseLockManager(store.locks_path, lease)
