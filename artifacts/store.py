"""A content-addressed artifact store on any fsspec file system.

An artifact is a folder of files. Its digest is the sha256 of its content (the
relative path and sha256 of every file, plus its kind), so two stages that produce
byte-identical output produce the same artifact, and a path never names two
different contents. Layout under the root:

    objects/<digest>/...           the files, plus manifest.json (written last)
    aliases/<name>.json            pointers such as emotion/latest -> digest
    keys/<cache key>.json          the cache's index: what run_stage made under each key (artifacts/cache.py)
    records/<cache key>            Prefect's cache records of stores before the one cache (read, never written)
    locks/<cache key>.lock         leases held while a stage computes
    staging/<uuid>/                work in progress (local stores only)

Publishing is atomic: a local artifact is built under staging/ and renamed into
objects/ in one step; on object stores, where there is no rename, the manifest is
uploaded last and an artifact without a manifest does not exist. Readers verify
every file against the manifest before use, so a truncated or altered artifact is
never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import fsspec
from pydantic import BaseModel, ConfigDict, field_validator

from artifacts import copies, signing

from artifacts.names import (DIGEST_PATTERN, MANIFEST, REPAIR, StoreError, check_alias, check_digest, inside,  # noqa: F401
                             kind_problem, links_in, manifest_problem)

DEFAULT_STORE = ".distillery"


class NoAlias(StoreError):
    """The alias does not exist (as opposed to one that exists but cannot be trusted)."""


class ArtifactRef(BaseModel):
    """The only thing stages hand to each other: where an artifact is and what it is."""

    model_config = ConfigDict(frozen=True)

    kind: str
    digest: str

    @field_validator("kind")
    @classmethod
    def _kind_is_a_word(cls, value: str) -> str:
        problem = kind_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("digest")
    @classmethod
    def _digest_is_sha256(cls, value: str) -> str:
        if not DIGEST_PATTERN.match(value):
            raise ValueError(f"not a sha256 hex digest: {value!r}")
        return value

    @property
    def short(self) -> str:
        return self.digest[:12]


@dataclass(frozen=True)
class Verification:
    ok: bool
    problem: str = ""


def sha256_file(path: str | Path, fs: fsspec.AbstractFileSystem | None = None) -> str:
    digest = hashlib.sha256()
    opener = fs.open if fs is not None else open
    with opener(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def machine_cache() -> Path:
    """This machine's own folder (env DISTILLERY_CACHE): copies of remote artifacts, lock files of a remote store."""
    return Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))


def content_digest(kind: str, files: dict[str, str]) -> str:
    """The artifact's identity: its kind and the checksum of every file, by path."""
    canonical = json.dumps({"kind": kind, "files": files}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def checksum_tree(folder: Path) -> dict[str, str]:
    files = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name != MANIFEST:
            files[name] = sha256_file(path)
    return files


class ArtifactStore:
    """Content-addressed artifacts under one fsspec root (a folder, s3://..., memory://...)."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_STORE):
        root = os.fspath(root)
        self.fs, path = fsspec.core.url_to_fs(root)
        self.is_local = "file" in _protocols(self.fs)
        if self.is_local:
            path = str(Path(path).expanduser().resolve())
        self.path = path.rstrip("/")
        self.root = path if self.is_local else root.rstrip("/")
        # Verification hashes whole files; remember what already passed in this process,
        # keyed by size and mtime so a file changed behind our back is hashed again.
        self._verified: dict[str, tuple] = {}
        # Local copies of remote artifacts hashed in this process, by their files' sizes and mtimes.
        self._copies: dict[str, tuple] = {}

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    # -- paths -------------------------------------------------------------------------
    @property
    def records_path(self) -> str:
        """Where Prefect kept cache records before the one cache (key -> ArtifactRef, as JSON); read for old stores."""
        return f"{self.path}/records"

    @property
    def locks_path(self) -> Path:
        """Lock files for stage keys: in the store when local, else in a local folder."""
        if self.is_local:
            return Path(self.path) / "locks"
        return machine_cache() / "locks"

    def object_path(self, digest: str) -> str:
        return f"{self.path}/objects/{check_digest(digest)}"

    def _alias_path(self, name: str) -> str:
        return f"{self.path}/aliases/{check_alias(name)}.json"

    # -- writing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def new_artifact(self) -> Iterator[Path]:
        """A private local folder to build an artifact in; removed afterwards.

        For a local store it lives under the root, so publishing is a rename on one
        file system; otherwise in the system temp folder.
        """
        owner = None
        if self.is_local:
            staging = Path(self.path) / "staging"
            staging.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=f"{uuid.uuid4().hex}-", dir=staging))
            # Who builds here, beside the folder (inside it, it would be published): gc leaves
            # the folder of a live process alone however long its stage runs.
            owner = staging_owner_file(workdir)
            owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        else:
            workdir = Path(tempfile.mkdtemp(prefix="distillery-"))
        try:
            yield workdir
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if owner is not None:
                owner.unlink(missing_ok=True)

    def publish(self, workdir: Path, kind: str, manifest: dict[str, Any]) -> ArtifactRef:
        """Move a finished folder into the store under its content digest."""
        if (workdir / MANIFEST).exists():
            raise StoreError(f"{MANIFEST} is reserved for the store; rename that file")
        links = links_in(workdir)
        if links:
            raise StoreError(f"refusing to publish a {kind} artifact holding symbolic links {links[:3]}: "
                             f"copy the files they point to instead")
        files = checksum_tree(workdir)
        if not files:
            raise StoreError("refusing to publish an empty artifact")
        problem = manifest_problem({"kind": kind, "files": files})
        if problem:
            raise StoreError(f"refusing to publish a {kind} artifact: {problem}")
        digest = content_digest(kind, files)
        ref = ArtifactRef(kind=kind, digest=digest)
        if self.verify(ref).ok:
            return ref  # identical content already published: keep the first copy
        if self.fs.exists(f"{self.object_path(digest)}/{MANIFEST}"):
            self.remove(digest)  # a published but broken copy must not block the good one
        # No manifest: nothing there, or another publisher's upload of this digest in progress.
        # Same digest, same bytes: uploading over it is harmless, deleting it would not be.
        full_manifest = {
            **manifest,
            "kind": kind,
            "digest": digest,
            "files": files,
            "sizes": {name: (workdir / name).stat().st_size for name in files},
            "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        target = self.object_path(digest)
        (workdir / MANIFEST).write_text(json.dumps(full_manifest, indent=2, sort_keys=True))
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(workdir, target)
            except OSError:
                if not self.verify(ref).ok:  # lost a race to a concurrent publisher?
                    raise
            workdir.mkdir()  # the caller's context manager expects to remove it
        else:
            names = sorted(files)
            self.fs.put([str(workdir / name) for name in names], [f"{target}/{name}" for name in names])  # one bulk put
            self.fs.put_file(str(workdir / MANIFEST), f"{target}/{MANIFEST}")  # last: its presence publishes
        return ref

    def remove(self, digest: str) -> None:
        path = self.object_path(digest)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
        self._verified.pop(digest, None)

    # -- reading -----------------------------------------------------------------------
    def manifest(self, ref: ArtifactRef | str) -> dict[str, Any]:
        digest = ref.digest if isinstance(ref, ArtifactRef) else ref
        with self.fs.open(f"{self.object_path(digest)}/{MANIFEST}", "r") as handle:
            return json.load(handle)

    def verify(self, ref: ArtifactRef | str) -> Verification:
        """Check that the artifact exists and every file matches its manifest.

        Sizes are checked where the files are; contents are hashed once per process (while
        the files' sizes, mtimes and ETags stay as they were). A remote artifact is hashed
        by fetching it into the machine's cache (one bulk get) and hashing that copy, which
        `open` then hands out without fetching or hashing it again.
        """
        digest = ref.digest if isinstance(ref, ArtifactRef) else ref
        base = self.object_path(digest)
        try:
            manifest = self.manifest(digest)
        except FileNotFoundError:
            return Verification(False, "missing")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return Verification(False, "manifest is corrupt")
        # Names first: a name chosen by whoever wrote the manifest must not pick a path to read or write.
        problem = manifest_problem(manifest)
        if problem:
            return Verification(False, f"{problem} (run `{REPAIR}` to remove it)")
        files = manifest["files"]
        if content_digest(manifest["kind"], files) != digest:
            return Verification(False, "manifest does not match the digest")
        if self.is_local:
            links = links_in(Path(base))
            if links:
                return Verification(False, f"it holds symbolic links {links[:3]} (run `{REPAIR}` to remove it)")
        listing = self._listing(base)  # one listing: what is there, with sizes and times
        extra = sorted(set(listing) - set(files) - {MANIFEST})
        if extra:  # never used, so refused (locally `open` hands out the folder itself, where it would be read)
            return Verification(False, f"files {extra[:5]} are not in its manifest")
        stamp = []
        for name in sorted(files):
            info = listing.get(name)
            if info is None:
                return Verification(False, f"file {name} is missing")
            if info.get("size") != manifest.get("sizes", {}).get(name, info.get("size")):
                return Verification(False, f"file {name} has the wrong size")
            stamp.append((name, info.get("size"), info.get("mtime"), info.get("ETag")))
        if self._verified.get(digest) == tuple(stamp):
            return Verification(True)
        if self.is_local:
            for name, expected in sorted(files.items()):
                if sha256_file(f"{base}/{name}", self.fs) != expected:
                    return Verification(False, f"file {name} fails its checksum")
        else:
            problem = self._fetch(digest, files)
            if problem:
                return Verification(False, problem)
        self._verified[digest] = tuple(stamp)
        return Verification(True)

    def _listing(self, base: str) -> dict[str, dict]:
        """Every file under an artifact's folder, by its path relative to the folder: its info."""
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        root = base.rstrip("/").split("://", 1)[-1].lstrip("/")
        return {path.split("://", 1)[-1].lstrip("/")[len(root):].lstrip("/"): info for path, info in found.items()}

    def _cached_copy(self, digest: str) -> Path:
        return machine_cache() / digest

    def _fetch(self, digest: str, files: dict[str, str]) -> str:
        """Download a remote artifact's files into the machine's cache and hash them there; "" or what is wrong."""
        local = self._cached_copy(digest)
        partial = local.with_name(f"{digest}.{uuid.uuid4().hex}.partial")
        partial.mkdir(parents=True)
        try:
            names = sorted(files)
            # verify checked every name; `inside` checks each target again, the last guard before a write
            self.fs.get([f"{self.object_path(digest)}/{name}" for name in names], [str(inside(partial, name)) for name in names])
            problem = _mismatch(checksum_tree(partial), files)
            if problem:
                return problem
            # Workers on one machine share the cache: a good copy another made (or is reading)
            # stays; only a damaged one is swapped out, by renames, never emptied in place.
            if local.exists() and not _mismatch(checksum_tree(local), files):
                self._copies[digest] = _folder_stamp(local)
                return ""
            damaged = local.with_name(f"{digest}.{uuid.uuid4().hex}.damaged")
            if local.exists():
                os.rename(local, damaged)
            try:
                os.rename(partial, local)
            except OSError:  # another process put its copy there first
                if _mismatch(checksum_tree(local), files):
                    return "the machine's cached copy keeps changing under this process"
            finally:
                shutil.rmtree(damaged, ignore_errors=True)
            self._copies[digest] = _folder_stamp(local)
            copies.touch(machine_cache(), digest)
            copies.evict(machine_cache(), keep=digest)  # within DISTILLERY_CACHE_MAX_GB, least recently used first
            return ""
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def open(self, ref: ArtifactRef) -> Path:
        """A local folder holding the verified artifact (a remote one fetched once, by `verify`)."""
        check = self.verify(ref)
        if not check.ok:
            raise StoreError(f"artifact {ref.kind} {ref.short} cannot be used: {check.problem}")
        if self.is_local:
            return Path(self.object_path(ref.digest))
        copies.hold(machine_cache(), ref.digest)  # in use by this process from here: never evicted under it
        local = self._cached_copy(ref.digest)
        files = self.manifest(ref)["files"]
        if self._copies.get(ref.digest) == _folder_stamp(local):
            return local  # the copy fetched and hashed in this process, untouched since
        if not local.exists() or _mismatch(checksum_tree(local), files):  # the cache was cleared or altered
            problem = self._fetch(ref.digest, files)
            if problem:
                raise StoreError(f"artifact {ref.kind} {ref.short} cannot be used: {problem}")
        self._copies[ref.digest] = _folder_stamp(local)
        return local

    def last_modified(self, digest: str) -> float | None:
        """When any file under the artifact's folder last changed (epoch seconds), None if it has none.
        File systems report it differently: local mtime, S3 LastModified, memory created."""
        times = []
        for info in self._listing(self.object_path(digest)).values():
            stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
            if hasattr(stamp, "timestamp"):
                stamp = stamp.timestamp()
            if isinstance(stamp, (int, float)):
                times.append(float(stamp))
        return max(times) if times else None

    def digests(self) -> list[str]:
        try:
            names = self.fs.ls(f"{self.path}/objects", detail=False)
        except FileNotFoundError:
            return []
        return sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in names if DIGEST_PATTERN.match(n.rstrip("/").rsplit("/", 1)[-1]))

    # -- what each cache key made ---------------------------------------------------------
    def note_key(self, key: str, ref: ArtifactRef) -> None:
        """Note that a stage made `ref` under cache key `key`: the cache's index (artifacts/cache.py).

        The manifest cannot say it: identical content keeps the manifest (and the key) it
        was first published with. `gc` keeps what a note names.
        """
        self._write_ref(self._key_path(key), ref, f"key:{key}")

    def made_under(self, key: str, signed: bool = True) -> ArtifactRef | None:
        """The artifact noted for `key`, unverified, or None. `signed=False` skips the signature check
        (gc keeps whatever a note names, trusted or not: deleting is what must not be fooled into)."""
        path = self._key_path(key)
        try:
            with self.fs.open(path, "r") as handle:
                payload = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except ValueError:  # a torn or altered note: the key is looked up as if never noted
            return None
        try:
            if signed:
                payload = signing.checked(payload, f"key:{key}", f"the key note {path}")
            return ArtifactRef.model_validate({k: v for k, v in payload.items() if k != signing.FIELD})
        except ValueError:
            return None  # SignatureError is a StoreError, not a ValueError: it reaches the caller

    def noted_keys(self) -> list[str]:
        try:
            names = self.fs.ls(f"{self.path}/keys", detail=False)
        except FileNotFoundError:
            return []
        keys = (name.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json") for name in names)
        return sorted(key for key in keys if DIGEST_PATTERN.match(key))

    def forget_key(self, key: str) -> None:
        path = self._key_path(key)
        if self.fs.exists(path):
            self.fs.rm(path)

    def _key_path(self, key: str) -> str:
        if not DIGEST_PATTERN.match(key):
            raise StoreError(f"not a cache key: {key!r}")
        return f"{self.path}/keys/{key}.json"

    # -- aliases -----------------------------------------------------------------------
    def set_alias(self, name: str, ref: ArtifactRef) -> None:
        self._write_ref(self._alias_path(name), ref, f"alias:{name}")

    def _write_ref(self, path: str, ref: ArtifactRef, what: str) -> None:
        payload = json.dumps(signing.sign(ref.model_dump(), what))
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            Path(tmp).write_text(payload)
            os.replace(tmp, path)
        else:
            with self.fs.open(path, "w") as handle:
                handle.write(payload)

    def aliases(self) -> list[str]:
        base = f"{self.path}/aliases"
        try:
            files = self.fs.find(base)
        except FileNotFoundError:
            return []
        return sorted(f[len(base) + 1 : -len(".json")] for f in files if f.endswith(".json") and f.startswith(base + "/"))

    def resolve_alias(self, name: str) -> ArtifactRef:
        path = self._alias_path(name)
        try:
            with self.fs.open(path, "r") as handle:
                payload = json.loads(handle.read())
        except FileNotFoundError:
            raise NoAlias(f"no alias {name!r} in store {self.root}") from None
        except ValueError:
            raise StoreError(f"alias {name!r} in store {self.root} is damaged ({path} is not JSON): set it again, "
                             f"e.g. by rerunning the workload or `distillery promote`") from None
        try:
            return ArtifactRef.model_validate(signing.checked(payload, f"alias:{name}", f"alias {name!r} ({path})"))
        except ValueError as exc:
            raise StoreError(f"alias {name!r} in store {self.root} does not name an artifact ({exc}); set it again") from None


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def staging_owner_file(workdir: Path) -> Path:
    return workdir.with_name(workdir.name + ".owner.json")


def staging_in_use(workdir: Path) -> bool:
    """Whether a live process on this machine is building in this staging folder."""
    try:
        owner = json.loads(staging_owner_file(workdir).read_text())
        host, pid = owner["host"], int(owner["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return True  # another machine's run on a shared folder: not ours to judge
    try:
        os.kill(pid, 0)  # PermissionError too means the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _mismatch(found: dict[str, str], expected: dict[str, str]) -> str:
    """What differs between a copy's checksums and its manifest's ("" if nothing)."""
    for name, sha in sorted(expected.items()):
        if name not in found:
            return f"file {name} is missing"
        if found[name] != sha:
            return f"file {name} fails its checksum"
    extra = sorted(set(found) - set(expected))
    return f"files {extra} are not in its manifest" if extra else ""


def _folder_stamp(folder: Path) -> tuple:
    """Names, sizes and mtimes of a folder's files: unchanged, a copy hashed once need not be hashed again."""
    if not folder.exists():
        return ()
    return tuple((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(folder.rglob("*")) if p.is_file())
