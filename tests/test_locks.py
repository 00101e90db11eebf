"""Stage locks are leases: held while the holder lives, lapsing soon after it dies."""

import subprocess
import sys
import textwrap
import time

from artifacts.locks import LeaseLockManager

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from artifacts.locks import LeaseLockManager
    manager = LeaseLockManager(Path(sys.argv[1]), lease_seconds=1.5)
    assert manager.acquire_lock("stage-key", "worker-a")
    print("held", flush=True)
    time.sleep(600)
""")


def test_lease_is_renewed_while_holder_lives_and_lapses_when_it_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        manager = LeaseLockManager(tmp_path, lease_seconds=1.5)
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


def test_released_lock_is_not_resurrected_by_a_late_renewal(tmp_path):
    manager = LeaseLockManager(tmp_path, lease_seconds=0.3)
    assert manager.acquire_lock("k", "me")
    time.sleep(0.25)
    manager.release_lock("k", "me")
    time.sleep(0.5)
    assert not (tmp_path / "k.lock").exists()
