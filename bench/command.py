"""The command line, the run they measure, and the result files that the model
benchmarks (compare, fusion, ceiling) share."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from artifacts.runs import RUN_KIND, RunRecord, latest_run, read_run, runs_naming
from artifacts.store import ArtifactRef, ArtifactStore, StoreError

RESULTS = Path(__file__).resolve().parent / "results"
INT8_ROLE = "student_int8"


def parser(doc: str, name: str, int8_help: str, quick_help: str) -> argparse.ArgumentParser:
    """Arguments every model benchmark takes; a benchmark adds its own to the parser."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("DISTILLERY_STORE", ".distillery"))
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
    """The run a benchmark measures: `--int8`, else `<workload>/latest`.

    `start` is an alias or digest of a run record, or the digest of an INT8 student
    that a run of this workload published (its newest such run). Benchmarks read
    every role from the record; none follows manifests' upstream links.
    """
    if start is None:
        try:
            return latest_run(store, workload)
        except StoreError as exc:
            raise SystemExit(f"{exc}; run the workload first, e.g. `python flows/{workload}.py`") from None
    if start in store.aliases():
        ref = store.resolve_alias(start)
    elif start in store.digests():
        ref = ref_of(store, start)
    else:
        raise SystemExit(f"--int8 {start!r} is neither an alias nor a full artifact digest in {store.root}: "
                         f"`python -m artifacts --store {store.root} list` shows both")
    record = read_run(store, ref) if ref.kind == RUN_KIND else run_of_int8(store, workload, start, ref)
    if record.workload != workload:
        raise SystemExit(f"--int8 {start!r} is a run of workload {record.workload!r}, not {workload!r}: "
                         f"pass --workload {record.workload}")
    return record


def run_of_int8(store: ArtifactStore, workload: str, start: str, int8: ArtifactRef) -> RunRecord:
    """The newest run record (of this workload, if any is) whose INT8 student is `int8`."""
    runs = runs_naming(store, INT8_ROLE, int8.digest)
    if not runs:
        manifest = store.manifest(int8)
        raise SystemExit(f"--int8 {start!r} is a {manifest.get('kind')} artifact made by stage {manifest.get('stage')!r}, "
                         f"and no run record names it as its INT8 student: pass a run record, e.g. {workload}/latest, "
                         f"or the INT8 student of a run")
    return next((run for run in runs if run.workload == workload), runs[0])


def write_results(result: dict, table: str, name: str, args: argparse.Namespace) -> None:
    """Print the markdown table; write it and the JSON beside each other."""
    print("\n" + table)
    out = args.out or RESULTS / f"{name}-{args.workload}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
