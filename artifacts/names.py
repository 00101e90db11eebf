"""Every name that comes out of the store is checked here before it is used.

A store is written by others: a teammate, a script with bucket credentials, an
intruder. What they write is data, and a name in it must never choose a path outside
the place it is meant for. A manifest naming `../../site-packages/sitecustomize.py`
(its digest computed to match) would otherwise be downloaded outside the machine
cache by every reader, and a `sitecustomize.py` or `.pth` file there is code on the
next Python start. So each kind of name has one rule, applied on publish and on
every read, local and remote:

- file names in a manifest: relative POSIX paths of normal segments (no `..`, no `.`,
  no empty segment, no leading `/`, no backslash, no drive letter, no control
  characters, already normalised), of bounded length, not the manifest itself;
- digests and cache keys: 64 lower-case hex characters;
- alias names: lower-case words separated by `/`;
- artifact kinds: a short lower-case word;
- local artifacts hold no symbolic links (a link is a path the manifest does not name).

A bad name is a `NameError_` (a `StoreError`), whose message names the artifact and the
repair (`distillery verify --repair` removes an artifact that fails).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from pathlib import Path
from typing import Any

DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")
ALIAS_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.-]*)*$")
KIND_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MANIFEST = "manifest.json"
# Bounds every common file system accepts: 255 bytes a segment, 1,024 a path; depth 16.
MAX_SEGMENT_BYTES = 255
MAX_NAME_BYTES = 1024
MAX_DEPTH = 16
ALIAS_MAX = 200
DRIVE = re.compile(r"^[A-Za-z]:")
REPAIR = "distillery verify --repair"


class StoreError(RuntimeError):
    """The store cannot serve or accept an artifact."""


def file_name_problem(name: Any) -> str:
    """Why `name` may not be a file name inside an artifact ("" if it may)."""
    if not isinstance(name, str) or not name:
        return f"file name {name!r} is not a non-empty string"
    if any(unicodedata.category(ch) == "Cc" for ch in name):  # NUL, newline, escape, DEL, C1 controls
        return f"file name {name!r} holds control characters"
    if "\\" in name:
        return f"file name {name!r} holds a backslash"
    if name.startswith("/"):
        return f"file name {name!r} is an absolute path"
    if DRIVE.match(name):
        return f"file name {name!r} starts with a drive letter"
    segments = name.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return f"file name {name!r} has an empty, '.' or '..' segment"
    if posixpath.normpath(name) != name or unicodedata.normalize("NFC", name) != name:
        return f"file name {name!r} is not normalised"
    if len(name.encode()) > MAX_NAME_BYTES or any(len(s.encode()) > MAX_SEGMENT_BYTES for s in segments):
        return f"file name {name[:60]!r}... is longer than {MAX_NAME_BYTES} bytes (or a segment than {MAX_SEGMENT_BYTES})"
    if len(segments) > MAX_DEPTH:
        return f"file name {name[:60]!r} is more than {MAX_DEPTH} folders deep"
    if name == MANIFEST:
        return f"file name {MANIFEST!r} is reserved for the store's own manifest"
    return ""


def manifest_problem(manifest: Any) -> str:
    """Why a manifest's file table may not be used ("" if it may): every name and digest checked."""
    if not isinstance(manifest, dict):
        return "manifest is not a JSON object"
    files, sizes = manifest.get("files"), manifest.get("sizes", {})
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    if not isinstance(sizes, dict):
        return "manifest's sizes are not a table"
    kind = manifest.get("kind")
    if not isinstance(kind, str) or not KIND_PATTERN.match(kind):
        return f"manifest's kind {kind!r} is not a short lower-case word"
    for name, sha in files.items():
        problem = file_name_problem(name)
        if problem:
            return problem
        if not isinstance(sha, str) or not DIGEST_PATTERN.match(sha):
            return f"file {name!r} has no sha256 in the manifest ({str(sha)[:70]!r})"
    for name, size in sizes.items():
        if name not in files or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"manifest's size of {name!r} is not a size of one of its files"
    # Two names that are one path on a case-insensitive file system, or a file that is also a folder.
    folded = {name.casefold() for name in files}
    if len(folded) != len(files):
        return "manifest names one file twice (names differing only in case)"
    folders = {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}
    clash = sorted(folders & set(files))
    if clash:
        return f"manifest names {clash[0]!r} as a file and as a folder"
    return ""


def digest_problem(value: Any, what: str = "digest") -> str:
    if isinstance(value, str) and DIGEST_PATTERN.match(value):
        return ""
    return f"{what} {str(value)[:80]!r} is not a sha256 hex digest"


def alias_problem(name: Any) -> str:
    if (isinstance(name, str) and len(name) <= ALIAS_MAX and ALIAS_PATTERN.match(name)
            and ".." not in name.split("/")):
        return ""
    return f"invalid alias {str(name)[:80]!r}: use lower-case words separated by '/', e.g. emotion/latest"


def kind_problem(kind: Any) -> str:
    if isinstance(kind, str) and KIND_PATTERN.match(kind):
        return ""
    return f"artifact kind {str(kind)[:80]!r} is not a short lower-case word"


def check_digest(value: Any, what: str = "artifact name") -> str:
    problem = digest_problem(value, what)
    if problem:
        raise StoreError(f"refusing {problem}")
    return value


def check_alias(name: Any) -> str:
    problem = alias_problem(name)
    if problem:
        raise StoreError(problem)
    return name


def inside(base: Path, name: str) -> Path:
    """`base / name`, checked (again, after `file_name_problem`) to resolve inside `base`: the last
    guard before a file is written from a name someone else chose."""
    problem = file_name_problem(name)
    target = (base / name)
    if problem or not target.resolve().is_relative_to(base.resolve()):
        raise StoreError(f"refusing to write {name!r} outside {base}: {problem or 'it resolves elsewhere'}")
    return target


def links_in(folder: Path) -> list[str]:
    """Symbolic links under a local folder, by relative path (they are refused in artifacts)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink())


def refused(artifact: str, problem: str) -> str:
    """The message for an artifact a name check refuses: which one, why, and the repair."""
    return f"artifact {artifact} is refused: {problem}; run `{REPAIR}` to remove it, then rerun what made it"
