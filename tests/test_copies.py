"""The machine cache of remote copies stays within its bound, least recently used first,
and never loses a copy another process is using (artifacts/copies.py)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from artifacts import copies
from artifacts.store import ArtifactStore, StoreError, machine_cache

MB = 1_000_000


def publish(store: ArtifactStore, body: bytes):
    with store.new_artifact() as out:
        (out / "model.onnx").write_bytes(body)
        return store.publish(out, "onnx", {})


def _hold_until_told(root: str, digest: str, ready, done) -> None:
    from artifacts.store import ArtifactRef

    ArtifactStore(root).open(ArtifactRef(kind="onnx", digest=digest))  # e.g. `serve` holding its model
    ready.set()
    done.wait(60)
    os._exit(0)  # not the exit handlers a forked test process may have inherited (tests/test_promotions.py)


def test_least_recently_used_copies_go_first_and_a_copy_in_use_stays(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(copies.MAX_GB_ENV, "0.0025")  # room for two of the three 1 MB copies
    root = f"memory://copies-{tmp_path.name}"
    store = ArtifactStore(root)
    a, b, c = (publish(store, bytes([n]) * MB) for n in range(3))
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    reader = context.Process(target=_hold_until_told, args=(root, a.digest, ready, done))
    reader.start()
    try:
        assert ready.wait(60)
        assert ArtifactStore(root).verify(b).ok and ArtifactStore(root).verify(c).ok  # fetched: a, b, c: one too many
        present = {p.name for p in machine_cache().iterdir() if p.is_dir()}
        # a is the least recently used, but the other process holds it: b went instead.
        assert present == {a.digest, c.digest}
    finally:
        done.set()
        reader.join(60)
    assert reader.exitcode == 0
    assert ArtifactStore(root).verify(b).ok  # fetched again; a is free now and the oldest
    assert {p.name for p in machine_cache().iterdir() if p.is_dir()} == {b.digest, c.digest}
    assert sum(size for _, _, size in copies.copies(machine_cache())) <= 2.5 * MB


def test_a_copy_opened_by_this_process_is_never_evicted(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(copies.MAX_GB_ENV, "0.0015")  # room for one
    root = f"memory://copies-own-{tmp_path.name}"
    store = ArtifactStore(root)
    a, b = publish(store, b"a" * MB), publish(store, b"b" * MB)
    held = ArtifactStore(root).open(a)
    assert ArtifactStore(root).verify(b).ok
    assert (held / "model.onnx").read_bytes() == b"a" * MB  # over the bound rather than pulled from under its reader
    os.close(copies._held.pop((str(machine_cache()), a.digest)))  # as if this process had ended (its lock with it)


@pytest.mark.parametrize("bad", ["abc", "0", "-1"])
def test_a_bad_bound_is_refused_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv(copies.MAX_GB_ENV, bad)
    with pytest.raises(StoreError, match=copies.MAX_GB_ENV):
        copies.max_bytes()


def test_the_default_bound_applies_without_the_variable(monkeypatch):
    monkeypatch.delenv(copies.MAX_GB_ENV, raising=False)
    assert copies.max_bytes() == int(copies.DEFAULT_MAX_GB * 1e9)
    assert os.environ.get(copies.MAX_GB_ENV) is None
