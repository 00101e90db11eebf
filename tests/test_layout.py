"""The layout's rules, read off the source: what may import what.

- a stage imports helpers, never another stage: its cache key fingerprints the code it
  imports, so a stage importing a stage reruns for the other's edits;
- helpers never import stages;
- artifacts/ (the store, keys, locks, runs) imports neither tasks/ nor flows/: the store
  must not carry the pipeline's code, and a stage's fingerprint must not carry the store's;
- every stage module is run by a step of the declared DAG (or is the report, which
  flows/publish.py runs after it), and every stage the DAG runs lives in tasks/stages/.
"""

from __future__ import annotations

import ast
from pathlib import Path

from flows.dag import STAGES
from flows.publish import report

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a module imports (`from a.b import c` gives a.b and a.b.c)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def modules(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if p.name != "__init__.py")


def stage_modules() -> set[str]:
    return {module_name(p) for p in modules("tasks/stages")}


def test_a_stage_never_imports_another_stage():
    stages = stage_modules()
    offenders = {module_name(p): sorted(imported_modules(p) & (stages - {module_name(p)}))
                 for p in modules("tasks/stages")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_helpers_never_import_stages():
    offenders = {module_name(p): sorted(m for m in imported_modules(p) if m.startswith("tasks.stages"))
                 for p in modules("tasks") if not module_name(p).startswith("tasks.stages.")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_artifacts_import_neither_tasks_nor_flows():
    offenders = {module_name(p): sorted(m for m in imported_modules(p) if m.split(".")[0] in ("tasks", "flows"))
                 for p in modules("artifacts")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_dag_runs_every_stage_module_and_only_those():
    assert {stage.build.__module__ for stage in (*STAGES, report.STAGE)} == stage_modules()
