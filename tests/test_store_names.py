"""Names that come out of the store are checked before use (artifacts/names.py), on every
kind of store: a local folder, `memory://`, and the real S3 server of the team stack.

Each case plants what a hostile writer could: an artifact whose manifest's checksums and
digest are all correct, but one of whose file names is not a plain relative path. A reader
must refuse it (naming the artifact and `distillery verify --repair`) and write nothing
anywhere, least of all outside its machine cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts.names import file_name_problem, manifest_problem
from artifacts.store import MANIFEST, ArtifactRef, ArtifactStore, StoreError, content_digest

REPO = Path(__file__).resolve().parents[1]

# One case per rule of artifacts/names.py file_name_problem.
BAD_NAMES = {
    "dot-dot": "../../outside/sitecustomize.py",
    "absolute": "/tmp/distillery-absolute-escape.pth",
    "backslash": "..\\..\\outside\\evil.pth",
    "drive-letter": "C:evil.pth",
    "control-character": "model\n.onnx",
    "dot-segment": "./model.onnx",
    "empty-segment": "model//config.json",
    "not-normalised": "cafe\u0301.txt",  # NFD: the same name as NFC 'café' on some file systems
    "too-long": "x" * 300,
    "too-deep": "/".join(["d"] * 20) + "/f",
    "reserved": MANIFEST,
}


def plant(store: ArtifactStore, files: dict[str, bytes], kind: str = "onnx") -> str:
    """Writes an artifact as a hostile writer would: any names, a manifest whose digest and checksums match."""
    checksums = {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}
    digest = content_digest(kind, checksums)
    base = store.object_path(digest)
    if not store.is_local:  # an object store takes most keys literally, '..' and all
        for name, body in files.items():
            try:
                store.fs.pipe_file(f"{base}/{name}", body)
            except OSError:  # a key this store refuses (S3: a '//' in it): the manifest naming it is enough
                pass
    else:  # a bad local name cannot be written inside the folder: the manifest naming it is enough
        Path(base).mkdir(parents=True, exist_ok=True)
        for name, body in files.items():
            if not file_name_problem(name):
                (Path(base) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(base) / name).write_bytes(body)
    manifest = {"kind": kind, "digest": digest, "files": checksums, "sizes": {n: len(b) for n, b in files.items()}}
    store.fs.pipe_file(f"{base}/{MANIFEST}", json.dumps(manifest).encode())
    return digest


def refusals(url: str, cache: Path) -> dict[str, str]:
    """For each bad name: what a reader of an artifact naming it says (verify, then open)."""
    saved = os.environ.get("DISTILLERY_CACHE")
    os.environ["DISTILLERY_CACHE"] = str(cache)  # put back below: this also runs inside the test process
    try:
        return _refusals(url)
    finally:
        if saved is None:
            os.environ.pop("DISTILLERY_CACHE", None)
        else:
            os.environ["DISTILLERY_CACHE"] = saved


def _refusals(url: str) -> dict[str, str]:
    out = {}
    for rule, name in BAD_NAMES.items():
        store = ArtifactStore(url)
        digest = plant(store, {"config.json": b"{}", name: f"import os  # planted by {rule}\n".encode()})
        reader = ArtifactStore(url)
        check = reader.verify(digest)
        try:
            reader.open(ArtifactRef(kind="onnx", digest=digest))
            out[rule] = f"OPENED (verify said {check.ok}: {check.problem})"
        except StoreError as exc:
            out[rule] = str(exc)
    return out


def outside_writes(root: Path, cache: Path) -> list[str]:
    """Files under `root` (the test's whole folder) that are neither in the cache nor the local store."""
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and cache not in p.parents and "store" not in p.parts)


def assert_all_refused(found: dict[str, str], digest_hint: str = "") -> None:
    assert set(found) == set(BAD_NAMES)
    for rule, message in found.items():
        assert message.startswith("artifact onnx "), (rule, message)  # names the artifact
        assert "distillery verify --repair" in message, (rule, message)  # and the repair


def test_every_bad_name_is_refused_by_a_local_store(tmp_path):
    cache = tmp_path / "cache"
    assert_all_refused(refusals(str(tmp_path / "store"), cache))
    assert outside_writes(tmp_path, cache) == []


def test_every_bad_name_is_refused_by_a_memory_store_and_nothing_is_written_outside_the_cache(tmp_path):
    cache = tmp_path / "work" / "cache"  # ../../outside from a copy in here lands in tmp_path/outside
    found = refusals(f"memory://names-{tmp_path.name}", cache)
    assert_all_refused(found)
    assert outside_writes(tmp_path, cache) == []
    assert not Path("/tmp/distillery-absolute-escape.pth").exists()
    assert not list(cache.glob("*/*")) or all(".partial" not in p.name for p in cache.iterdir())


S3_REFUSALS = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from tests.test_store_names import refusals
print(json.dumps(refusals(sys.argv[1], Path(sys.argv[2]))))
"""


def test_every_bad_name_is_refused_by_the_team_stacks_s3(stack, tmp_path):
    cache = tmp_path / "work" / "cache"
    url = stack["env"]["DISTILLERY_STORE"].rstrip("/") + f"-names-{tmp_path.name}"
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    out = subprocess.run([sys.executable, "-c", S3_REFUSALS, url, str(cache), str(REPO)], env=stack["env"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert bucket and url.startswith("s3://")
    assert_all_refused(json.loads(out.stdout.strip().splitlines()[-1]))
    assert outside_writes(tmp_path, cache) == []


def test_publish_refuses_a_name_a_reader_would_refuse(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with store.new_artifact() as out:
        (out / "model\n.onnx").write_text("x")
        with pytest.raises(StoreError, match="control characters"):
            store.publish(out, "onnx", {})


def test_a_symbolic_link_is_neither_published_nor_read(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("a file of the machine's, outside the store")
    store = ArtifactStore(tmp_path / "store")
    with store.new_artifact() as out:
        (out / "config.json").symlink_to(outside)
        with pytest.raises(StoreError, match="symbolic links"):
            store.publish(out, "onnx", {})
    # A link planted into a published artifact, with the same content as the file it replaced.
    with store.new_artifact() as out:
        (out / "config.json").write_text(outside.read_text())
        ref = store.publish(out, "onnx", {})
    planted = Path(store.object_path(ref.digest)) / "config.json"
    planted.unlink()
    planted.symlink_to(outside)
    check = ArtifactStore(tmp_path / "store").verify(ref)
    assert not check.ok and "symbolic links" in check.problem and "verify --repair" in check.problem


def test_manifest_tables_are_checked_as_well_as_names():
    good = {"kind": "onnx", "files": {"model.onnx": "a" * 64}, "sizes": {"model.onnx": 3}}
    assert manifest_problem(good) == ""
    assert "sha256" in manifest_problem({**good, "files": {"model.onnx": "../x"}})
    assert "size" in manifest_problem({**good, "sizes": {"model.onnx": -1}})
    assert "size" in manifest_problem({**good, "sizes": {"other": 1}})
    assert "kind" in manifest_problem({**good, "kind": "../run"})
    assert "twice" in manifest_problem({**good, "files": {"A.onnx": "a" * 64, "a.onnx": "b" * 64}, "sizes": {}})
    assert "folder" in manifest_problem({**good, "files": {"m": "a" * 64, "m/x": "b" * 64}, "sizes": {}})
    with pytest.raises(ValueError, match="kind"):
        ArtifactRef(kind="../../x", digest="a" * 64)
