"""The command line, the run they measure, and the result files that the model
benchmarks (compare, fusion, ceiling) share."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from artifacts import runs
from artifacts.edge import add_store_argument
from artifacts.runs import RunRecord
from artifacts.store import ArtifactRef, ArtifactStore, StoreError

RESULTS = Path(__file__).resolve().parent / "results"


def parser(doc: str, name: str, int8_help: str, quick_help: str) -> argparse.ArgumentParser:
    """Arguments every model benchmark takes; a benchmark adds its own to the parser."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_store_argument(parser)
    parser.add_argument("--workload", default="emotion")
    parser.add_argument("--int8", help=f"{int8_help}: a run record (alias or digest) or a run's INT8 student "
                                       f"(digest) (default: <workload>/latest)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help=f"JSON output (default: bench/results/{name}-<workload>[-quick].json)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return parser


def ref_of(store: ArtifactStore, digest: str) -> ArtifactRef:
    return ArtifactRef(kind=store.manifest(digest)["kind"], digest=digest)


def find_run(store: ArtifactStore, workload: str, start: str | None) -> RunRecord:
    """The run a benchmark measures: `--int8` (a run record or a run's INT8 student, by alias or
    digest), else `<workload>/latest` (artifacts/runs.py `find_run`); a bad one ends the benchmark."""
    try:
        return runs.find_run(store, start, workload)
    except StoreError as exc:
        raise SystemExit(f"--int8 {start}: {exc}" if start else f"{exc}; run the workload first, e.g. "
                         f"`distillery run --preset {workload}`") from None


def write_results(result: dict, table: str, name: str, args: argparse.Namespace) -> None:
    """Print the markdown table; write it and the JSON beside each other."""
    print("\n" + table)
    out = args.out or RESULTS / f"{name}-{args.workload}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
