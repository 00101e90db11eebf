"""Stage locks are leases: held while the holder lives, lapsing soon after it dies.
Both kinds: lock files (one machine) and Redis (workers on many machines)."""

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from artifacts.locks import LeaseLockManager, RedisLeaseLockManager

# The child scripts' lock manager, on a folder or a Redis URL (argv[1]) with lease LEASE.
CHILD_MANAGER = """
import sys, time
from pathlib import Path
from artifacts.locks import LeaseLockManager, RedisLeaseLockManager
where = sys.argv[1]
manager = (RedisLeaseLockManager(where, lease_seconds=LEASE) if where.startswith("redis://")
           else LeaseLockManager(Path(where), lease_seconds=LEASE))
"""

HOLDER = CHILD_MANAGER.replace("LEASE", "1.5") + textwrap.dedent("""
    assert manager.acquire_lock("stage-key", "worker-a")
    print("held", flush=True)
    time.sleep(600)
""")


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """A real redis-server on a free loopback port, answering: (its process, its URL)."""
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, cwd=folder)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    return server, url


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    server.terminate()
    server.wait()


@pytest.fixture(params=["file", "redis"])
def where(request, tmp_path):
    return str(tmp_path) if request.param == "file" else request.getfixturevalue("redis_url")


def manager_for(where: str, lease: float):
    return RedisLeaseLockManager(where, lease_seconds=lease) if where.startswith("redis://") else LeaseLockManager(Path(where), lease_seconds=lease)


def test_lease_is_renewed_while_holder_lives_and_lapses_when_it_is_killed(where):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, where], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        manager = manager_for(where, 1.5)
        time.sleep(4)  # well past one lease: renewals keep it held
        assert manager.is_locked("stage-key")
        assert not manager.acquire_lock("stage-key", "worker-b", acquire_timeout=1)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs
        holder.wait()
    started = time.monotonic()
    assert manager.acquire_lock("stage-key", "worker-b", acquire_timeout=10)
    assert time.monotonic() - started < 4
    manager.release_lock("stage-key", "worker-b")
    assert not manager.is_locked("stage-key")


def test_only_the_holder_releases_and_a_released_lock_stays_released(where):
    manager = manager_for(where, 0.3)
    assert manager.acquire_lock("k", "me")
    with pytest.raises(ValueError):
        manager.release_lock("k", "someone-else")
    time.sleep(0.25)
    manager.release_lock("k", "me")
    time.sleep(0.5)  # a late renewal must not bring it back
    assert not manager.is_locked("k")


CONTENDER = CHILD_MANAGER.replace("LEASE", "3") + textwrap.dedent("""
    me, log = sys.argv[2], Path(sys.argv[3])
    for turn in range(8):
        assert manager.acquire_lock("stage-key", me, acquire_timeout=60)
        with log.open("a") as f:
            f.write(f"in {me} {time.time()!r}\\n")
        time.sleep(0.02)
        with log.open("a") as f:
            f.write(f"out {me} {time.time()!r}\\n")
        manager.release_lock("stage-key", me)
""")


def test_contenders_for_one_key_hold_it_one_at_a_time(where, tmp_path):
    """Six processes take and give back one key eight times each, starting together on the
    lease of a killed holder: each gets every turn, and no two hold it at once. Prefect's own file
    lock manager failed this: a contender read a lock file created but not yet written."""
    dead = subprocess.Popen([sys.executable, "-c", HOLDER, where], stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline().strip() == "held"
    dead.kill()  # its lease lapses while the contenders wait: they race to take it over
    dead.wait()
    log = tmp_path / "turns.log"
    contenders = [subprocess.Popen([sys.executable, "-c", CONTENDER, where, f"c{i}", str(log)], stderr=subprocess.PIPE, text=True)
                  for i in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in contenders]
    assert [p.returncode for p in contenders] == [0] * 6, errors
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 6 * 8 * 2
    holder = None
    for kind, who, _ in sorted(events, key=lambda e: float(e[2])):
        if kind == "in":
            assert holder is None, f"{who} took the key while {holder} held it"
            holder = who
        else:
            assert holder == who
            holder = None
    assert not manager_for(where, 1).is_locked("stage-key")


def test_a_failed_renewal_is_retried_not_abandoned(where):
    """One renewal meets a backend error (a Redis timeout, say): the next tick renews, the lease holds."""
    manager = manager_for(where, lease=1.5)
    renew, failures = manager._renewals.renew, []

    def flaky(key, holder):
        if not failures:
            failures.append(key)
            raise ConnectionError("Timeout reading from socket")
        return renew(key, holder)

    manager._renewals.renew = flaky
    assert manager.acquire_lock("flaky-key", "worker-a")
    time.sleep(3.5)  # more than two leases: held only if renewals went on after the failure
    assert failures and manager.still_held("flaky-key", "worker-a")
    manager.release_lock("flaky-key", "worker-a")


PAUSED = CHILD_MANAGER.replace("LEASE", "1.5") + textwrap.dedent("""
    assert manager.acquire_lock("paused-key", "worker-a")
    print("held", flush=True)
    sys.stdin.readline()  # the parent pauses this process, then asks
    print("still held" if manager.still_held("paused-key", "worker-a") else "lost", flush=True)
""")


def test_a_holder_paused_past_its_lease_knows_it_lost_the_lock(where):
    """A worker stopped (SIGSTOP: a VM pause, a long GC, a swapped-out process) longer than its
    lease loses the lock to another worker, and says so when it resumes."""
    import os
    import signal

    repo = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", PAUSED, where], cwd=repo, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        os.kill(child.pid, signal.SIGSTOP)
        other = manager_for(where, lease=1.5)
        deadline = time.monotonic() + 10
        while not other.acquire_lock("paused-key", "worker-b", acquire_timeout=0.2):
            assert time.monotonic() < deadline, "the paused holder's lease never lapsed"
        os.kill(child.pid, signal.SIGCONT)
        child.stdin.write("check\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "lost"
        assert other.still_held("paused-key", "worker-b")
        other.release_lock("paused-key", "worker-b")  # or its renewals outlive the test's Redis
    finally:
        child.kill()
        child.wait()


def test_a_remote_store_needs_a_named_lock_server(monkeypatch):
    from artifacts.locks import lock_manager_for
    from artifacts.store import ArtifactStore, StoreError

    remote = ArtifactStore("memory://locks-need-a-server")
    monkeypatch.delenv("DISTILLERY_LOCKS", raising=False)
    with pytest.raises(StoreError, match=r"remote but no lock server.*DISTILLERY_LOCKS=local"):
        lock_manager_for(remote)
    monkeypatch.setenv("DISTILLERY_LOCKS", "local")  # one machine, on purpose
    assert isinstance(lock_manager_for(remote), LeaseLockManager)


def test_redis_down_mid_stage_fails_the_stage_and_publishes_nothing(tmp_path, monkeypatch):
    """The lock server dies while a stage computes: renewals fail, and the stage ends in an
    error instead of publishing work no lock covered any more."""
    import redis
    from pydantic import BaseModel

    from artifacts.cache import cached_or_run
    from artifacts.progress import Progress
    from artifacts.stage import Stage
    from artifacts.store import ArtifactStore
    from tasks.formats import Format

    server, url = start_redis(tmp_path)
    monkeypatch.setenv("DISTILLERY_LOCKS", url)
    monkeypatch.setenv("DISTILLERY_LOCK_LEASE_SECONDS", "3")

    class Nothing(BaseModel):
        pass

    def build(params, inputs, out, progress):
        server.kill()
        server.wait()
        time.sleep(2.5)  # renewals (every second) meet the outage
        (out / "blob.bin").write_bytes(b"work no lock covers any more")
        return {}

    stage = Stage(name="outage", writes=Format("blob", ("blob.bin",)), params=Nothing, inputs=(), build=build)
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(redis.ConnectionError):
        cached_or_run(stage, Nothing(), {}, store, Progress(log=lambda message: None, bar=False))
    assert store.digests() == []
