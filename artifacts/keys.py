"""Cache keys: what a stage's result depends on, hashed.

key = sha256(stage name, canonical JSON of its parameters, digests of its upstream
artifacts, fingerprint of its code, versions of the libraries it runs, extra inputs
such as the checksum of a source file).

The code fingerprint covers the stage's whole module and every project module it
imports (transitively, within the packages in FINGERPRINT_PACKAGES), not only the
task function's text as Prefect's TASK_SOURCE does: an edit to a helper changes the
result, so it must change the key. Modules are hashed by their syntax tree with the
docstrings of modules, classes and functions removed, so edits to comments, layout and
docstrings do not count (a reworded docstring of the training loop must not retrain a
40-minute teacher).

What still counts, on purpose: every other string, because the code cannot tell which
strings reach an artifact. Error and log messages are among them (an edit to one
reruns its stage), and so are pydantic `Field(description=...)` texts; telling those
apart from strings that change behaviour (a label, a file name, a format) would need
a judgement the hash cannot make safely. Type annotations count too.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import BaseModel

# Only the stage code decides what an artifact contains; the store, the flows and the
# Prefect wiring do not, so editing them must not invalidate trained models.
FINGERPRINT_PACKAGES = ("tasks",)


def canonical_json(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        raise TypeError("sets have no stable order; use a sorted list in parameters")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 3.0 and 3 are the same parameter
    return value


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ModuleNotFoundError, ValueError):  # e.g. `from tasks.x import SomeClass`
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """The tree with each module, class and function docstring dropped (a body left empty gets `pass`)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _project_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {
        name
        for name in found
        if name.split(".")[0] in FINGERPRINT_PACKAGES and _module_file(name) is not None
    }


@functools.lru_cache(maxsize=None)
def _module_code(name: str) -> tuple[str, frozenset[str]]:
    """A module's syntax-tree hash and the project modules it imports.

    Cached for the life of the process: the key must describe the code this process
    loaded, even if the file is edited while a long run is under way.
    """
    path = _module_file(name)
    if path is None:
        raise ValueError(f"cannot fingerprint module {name!r}: no Python source found")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return sha256_text(ast.dump(_without_docstrings(tree))), frozenset(_project_imports(tree, name, path.name == "__init__.py"))


def snapshot_loaded_code() -> None:
    """Fingerprint every project module already imported, as it is now (see _module_code)."""
    for name in list(sys.modules):
        if name.split(".")[0] in FINGERPRINT_PACKAGES and _module_file(name) is not None:
            _module_code(name)


def forget_code() -> None:
    """Read module files afresh on the next fingerprint (for tests that edit them)."""
    _module_code.cache_clear()


def code_fingerprint(modules: Iterable[str], extra_files: Iterable[Path] = ()) -> dict[str, str]:
    """Hash of each project module a stage runs, found by following its imports."""
    if _module_code.cache_info().currsize == 0:
        snapshot_loaded_code()
    hashes: dict[str, str] = {}
    pending = list(modules)
    while pending:
        name = pending.pop()
        if name in hashes:
            continue
        hashes[name], imports = _module_code(name)
        pending.extend(imports)
    for path in extra_files:
        hashes[f"file:{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return dict(sorted(hashes.items()))


def library_versions(names: Iterable[str]) -> dict[str, str]:
    versions = {}
    for name in sorted(set(names)):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def cache_key(
    stage: str,
    params: Any,
    upstream: Mapping[str, str],
    code: Mapping[str, str],
    versions: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> str:
    return sha256_text(
        canonical_json(
            {
                "stage": stage,
                "params": params,
                "upstream": dict(upstream),
                "code": dict(code),
                "versions": dict(versions),
                "extra": dict(extra or {}),
            }
        )
    )
