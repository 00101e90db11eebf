"""The content-addressed store: identity by content, atomic publish, verified reads."""

from pathlib import Path

import pytest

from artifacts.store import MANIFEST, ArtifactRef, ArtifactStore, StoreError


def publish(store: ArtifactStore, files: dict[str, bytes], kind: str = "model", **manifest) -> ArtifactRef:
    with store.new_artifact() as out:
        for name, content in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(content)
        return store.publish(out, kind, manifest)


def test_digest_depends_on_content_not_on_manifest_or_time(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    first = publish(store, {"a.bin": b"weights", "sub/b.json": b"{}"}, stage="x", seconds=1)
    again = publish(store, {"a.bin": b"weights", "sub/b.json": b"{}"}, stage="x", seconds=99)
    other = publish(store, {"a.bin": b"weights!", "sub/b.json": b"{}"})
    assert first == again
    assert other.digest != first.digest
    assert store.manifest(first)["seconds"] == 1  # the first publication is kept
    assert store.digests() == sorted([first.digest, other.digest])


def test_published_artifact_is_complete_and_staging_is_cleaned(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = publish(store, {"model.onnx": b"x" * 1000})
    folder = store.open(ref)
    assert (folder / "model.onnx").read_bytes() == b"x" * 1000
    manifest = store.manifest(ref)
    assert set(manifest["files"]) == {"model.onnx"} and manifest["sizes"]["model.onnx"] == 1000
    assert list((tmp_path / "store" / "staging").iterdir()) == []


def test_failed_build_publishes_nothing(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        with store.new_artifact() as out:
            (out / "half.bin").write_bytes(b"partial")
            raise RuntimeError("killed mid-write")
    assert store.digests() == []
    assert list((tmp_path / "store" / "staging").iterdir()) == []


@pytest.mark.parametrize("damage", ["delete_file", "truncate", "flip_byte", "delete_manifest", "extra_garbage_manifest"])
def test_damaged_artifact_fails_verification_and_is_never_opened(tmp_path, damage):
    store = ArtifactStore(tmp_path / "store")
    ref = publish(store, {"model.bin": bytes(range(256)) * 40})
    assert store.verify(ref).ok
    folder = Path(store.object_path(ref.digest))
    target = folder / "model.bin"
    if damage == "delete_file":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[1234] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (folder / MANIFEST).unlink()
    else:
        (folder / MANIFEST).write_text("{not json")
    fresh = ArtifactStore(tmp_path / "store")  # no memory of earlier verification
    assert not fresh.verify(ref).ok
    with pytest.raises(StoreError, match="cannot be used"):
        fresh.open(ref)


def test_flipped_byte_detected_even_after_earlier_verification(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = publish(store, {"model.bin": b"a" * 5000})
    assert store.verify(ref).ok
    target = Path(store.object_path(ref.digest)) / "model.bin"
    target.write_bytes(b"b" + b"a" * 4999)  # same size; mtime changes
    assert store.verify(ref).problem == "file model.bin fails its checksum"


def test_republishing_replaces_a_broken_copy(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = publish(store, {"m.bin": b"good"})
    (Path(store.object_path(ref.digest)) / "m.bin").write_bytes(b"evil")
    assert publish(store, {"m.bin": b"good"}) == ref
    assert store.verify(ref).ok


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs", "ABC", "a" * 63, "g" * 64])
def test_artifact_names_cannot_escape_the_store(tmp_path, name):
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(StoreError, match="not a sha256"):
        store.object_path(name)
    with pytest.raises(ValueError):
        ArtifactRef(kind="model", digest=name)


def test_aliases_point_at_artifacts_and_reject_escapes(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ref = publish(store, {"m.bin": b"1"})
    store.set_alias("emotion/latest", ref)
    assert store.resolve_alias("emotion/latest") == ref
    with pytest.raises(StoreError, match="no alias"):
        store.resolve_alias("sst2/latest")
    for bad in ("../x", "emotion/../../x", "Emotion/Latest", ""):
        with pytest.raises(StoreError, match="invalid alias"):
            store.set_alias(bad, ref)


def test_store_works_on_any_fsspec_filesystem():
    store = ArtifactStore("memory://distillery-test-store")
    ref = publish(store, {"model.onnx": b"onnx bytes", "config.json": b"{}"})
    assert store.verify(ref).ok
    local = store.open(ref)
    assert (local / "model.onnx").read_bytes() == b"onnx bytes"
    store.fs.rm(f"{store.object_path(ref.digest)}/model.onnx")
    assert not ArtifactStore("memory://distillery-test-store").verify(ref).ok


def test_a_remote_artifact_is_fetched_and_hashed_once_per_process(monkeypatch, tmp_path):
    import fsspec.implementations.memory as memory

    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore("memory://distillery-fetch-once")
    ref = publish(store, {"model.onnx": b"onnx bytes", "config.json": b"{}"})
    fetched, hashed = [], []
    real_get, real_sha = memory.MemoryFileSystem.get, __import__("artifacts.store", fromlist=["x"]).sha256_file
    monkeypatch.setattr(memory.MemoryFileSystem, "get", lambda self, *a, **k: fetched.append(a) or real_get(self, *a, **k))
    import artifacts.store as module

    monkeypatch.setattr(module, "sha256_file", lambda *a, **k: hashed.append(a[0]) or real_sha(*a, **k))
    reader = ArtifactStore("memory://distillery-fetch-once")
    for _ in range(3):
        assert reader.verify(ref).ok
        assert (reader.open(ref) / "model.onnx").read_bytes() == b"onnx bytes"
    assert len(fetched) == 1 and len(hashed) == 2  # one bulk get of both files, each hashed once, locally
    store.fs.pipe(f"{store.object_path(ref.digest)}/model.onnx", b"ONNX BYTES")  # altered in place, same size
    assert not ArtifactStore("memory://distillery-fetch-once").verify(ref).ok  # a new process hashes what is there


def test_workers_sharing_a_machine_cache_keep_a_good_copy_and_replace_a_damaged_one(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    publish(ArtifactStore("memory://distillery-shared-cache"), {"model.onnx": b"onnx bytes"})
    ref = publish(ArtifactStore("memory://distillery-shared-cache"), {"model.onnx": b"onnx bytes"})
    first = ArtifactStore("memory://distillery-shared-cache").open(ref)
    inode = (first / "model.onnx").stat().st_ino
    second = ArtifactStore("memory://distillery-shared-cache").open(ref)  # another worker: verifies, keeps the copy
    assert second == first and (second / "model.onnx").stat().st_ino == inode
    (first / "model.onnx").write_bytes(b"ONNX BYTES")  # damaged on this machine
    third = ArtifactStore("memory://distillery-shared-cache").open(ref)
    assert (third / "model.onnx").read_bytes() == b"onnx bytes"
    # nothing left behind but the copy and its in-use lock (artifacts/copies.py)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [ref.digest, f"{ref.digest}.lock"]


@pytest.mark.parametrize("where", ["local", "remote"])
def test_a_file_added_to_a_published_artifact_is_refused(tmp_path, monkeypatch, where):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore(tmp_path / "store" if where == "local" else f"memory://added-file-{tmp_path.name}")
    ref = publish(store, {"model/config.json": b"{}", "model/model.safetensors": b"weights"})
    assert store.verify(ref).ok
    store.fs.pipe(f"{store.object_path(ref.digest)}/model/modeling_custom.py", b"import os")  # planted beside the model
    check = ArtifactStore(store.root).verify(ref)
    assert not check.ok and "model/modeling_custom.py" in check.problem and "not in its manifest" in check.problem


def test_a_remote_publish_never_deletes_another_publishers_upload_in_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    store = ArtifactStore(f"memory://upload-in-progress-{tmp_path.name}")
    files = {"model.onnx": b"onnx bytes", "config.json": b"{}"}
    ref = publish(ArtifactStore(f"memory://upload-elsewhere-{tmp_path.name}"), files)  # the digest these files get
    store.fs.pipe(f"{store.object_path(ref.digest)}/model.onnx", b"onnx bytes")  # worker A: half uploaded, no manifest
    removed = []
    monkeypatch.setattr(store, "remove", lambda digest: removed.append(digest))
    assert publish(store, files) == ref  # worker B, same content
    assert removed == [] and ArtifactStore(store.root).verify(ref).ok


def test_verify_repair_leaves_an_upload_in_progress_alone(tmp_path):
    import subprocess
    import sys

    store = ArtifactStore(tmp_path / "store")
    good = publish(store, {"a.bin": b"a"})
    in_progress = "f" * 64
    (tmp_path / "store" / "objects" / in_progress).mkdir(parents=True)
    (tmp_path / "store" / "objects" / in_progress / "model.onnx").write_bytes(b"half")  # no manifest yet
    repair = subprocess.run([sys.executable, "-m", "artifacts", "--store", str(tmp_path / "store"), "verify", "--repair"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert repair.returncode == 0 and "INCOMPLETE fffffffffff" in repair.stdout, repair.stdout + repair.stderr
    assert (tmp_path / "store" / "objects" / in_progress / "model.onnx").exists() and store.verify(good).ok


def test_gc_collects_an_upload_that_never_finished_once_old(tmp_path):
    import os
    import subprocess
    import sys
    import time

    store = ArtifactStore(tmp_path / "store")
    publish(store, {"a.bin": b"a"})
    abandoned, in_progress = "a" * 64, "b" * 64
    for digest in (abandoned, in_progress):
        (tmp_path / "store" / "objects" / digest).mkdir(parents=True)
        (tmp_path / "store" / "objects" / digest / "model.onnx").write_bytes(b"half")  # no manifest
    two_hours_ago = time.time() - 7200
    os.utime(tmp_path / "store" / "objects" / abandoned / "model.onnx", (two_hours_ago, two_hours_ago))
    assert store.last_modified(abandoned) == pytest.approx(two_hours_ago)
    gc = subprocess.run([sys.executable, "-m", "artifacts", "--store", str(tmp_path / "store"), "gc", "--delete"],
                        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0 and "never finished" in gc.stdout, gc.stdout + gc.stderr
    assert not (tmp_path / "store" / "objects" / abandoned).exists()
    assert (tmp_path / "store" / "objects" / in_progress / "model.onnx").exists()  # younger than an hour: may be uploading
