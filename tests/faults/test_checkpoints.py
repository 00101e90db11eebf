"""Checkpoints on a remote store: an upload error mid-save loses nothing, and resumes leave no copies behind.

The remote store is fsspec's in-memory file system: not local, so checkpoints take the
remote path (uploads file by file, downloads into this machine's cache), as on S3.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest

from artifacts.checkpoints import Checkpoints
from artifacts.store import ArtifactStore

KEY = "e" * 64


@pytest.fixture
def remote(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "machine-cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # any temporary copy lands in tmp_path too
    return ArtifactStore(f"memory://checkpoint-test-{uuid.uuid4().hex}")


def remote_files(store: ArtifactStore, checkpoints: Checkpoints, name: str) -> list[str]:
    return [p for p in store.fs.find(checkpoints.path) if p.endswith("/" + name)]


def state(step: int):
    def write(folder: Path) -> None:
        (folder / "weights.bin").write_bytes(bytes([step]) * 4096)
        (folder / "optimizer.bin").write_bytes(bytes([step + 1]) * 4096)
    return write


def test_an_upload_error_mid_save_keeps_the_previous_checkpoint(remote, monkeypatch):
    checkpoints = Checkpoints(remote, KEY)
    checkpoints.save(100, state(1))
    real_put, uploads = remote.fs.put_file, []

    def flaky_put(local, remote_path, **kwargs):
        uploads.append(remote_path)
        if len(uploads) == 2:  # the network drops halfway through the second checkpoint
            raise OSError("connection reset by peer")
        return real_put(local, remote_path, **kwargs)

    monkeypatch.setattr(remote.fs, "put_file", flaky_put)
    with pytest.raises(OSError, match="connection reset"):
        checkpoints.save(200, state(2))
    monkeypatch.setattr(remote.fs, "put_file", real_put)
    step, folder = checkpoints.latest()
    assert step == 100 and (folder / "weights.bin").read_bytes() == bytes([1]) * 4096

    checkpoints.save(300, state(3))  # a later save goes through and replaces both the old and the torn one's remains
    step, folder = checkpoints.latest()
    assert step == 300 and (folder / "weights.bin").read_bytes() == bytes([3]) * 4096
    assert len(remote_files(remote, checkpoints, "weights.bin")) == 1


def test_resumes_keep_one_local_copy_and_clear_removes_it(remote, tmp_path):
    checkpoints = Checkpoints(remote, KEY)
    checkpoints.save(5, state(5))
    for _ in range(3):  # three resumes, e.g. three crashed attempts
        assert checkpoints.latest()[0] == 5
    assert len(list(tmp_path.rglob("weights.bin"))) == 1  # one local copy, wherever it is
    checkpoints.clear()
    assert list(tmp_path.rglob("weights.bin")) == []
    assert checkpoints.latest() is None and not remote.fs.exists(checkpoints.path)


def test_an_altered_checkpoint_is_never_loaded(remote):
    checkpoints = Checkpoints(remote, KEY)
    checkpoints.save(9, state(9))
    [weights] = remote_files(remote, checkpoints, "weights.bin")
    remote.fs.pipe_file(weights, b"tampered")
    assert checkpoints.latest() is None
