"""The command line and result files that the model benchmarks (compare, fusion, ceiling) share."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parser(doc: str, name: str, int8_help: str, quick_help: str) -> argparse.ArgumentParser:
    """Arguments every model benchmark takes; a benchmark adds its own to the parser."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--store", default=os.environ.get("DISTILLERY_STORE", ".distillery"))
    parser.add_argument("--workload", default="emotion")
    parser.add_argument("--int8", help=f"{int8_help} (default: <workload>/latest)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help=f"JSON output (default: bench/results/{name}-<workload>.json)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return parser


def write_results(result: dict, table: str, name: str, args: argparse.Namespace) -> None:
    """Print the markdown table; write it and the JSON beside each other."""
    print("\n" + table)
    out = args.out or RESULTS / f"{name}-{args.workload}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
