"""Command line for the workload flows: flags generated from the typed configuration.

Every stage parameter is a flag `--<stage>-<field>` whose help is the field's
description and whose default is the preset's value, so `--help` documents every
parameter and no flow file repeats one. Values are checked by the same pydantic
models the flow uses, once, before anything starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel

from flows.config import SECTIONS, PipelineConfig
from flows.presets import Overrides, build_config
from tasks.errors import DistilleryError

# Short names for the flags people type most.
ALIASES = {("data", "source"): "--data", ("teacher", "model"): "--teacher"}
ENVIRONMENT = {("data", "source"): "DISTILLERY_DATA"}
# Set from other parameters, not by hand: the tokenizer from the teacher and the
# student init; teacher inference runs on the teacher's device and precision.
DERIVED = {("tokenize", "tokenizer"), ("soft_labels", "precision"), ("soft_labels", "device")}
# --device sets both training stages' device.
DEVICE_SECTIONS = ("teacher", "student")
EXIT_BAD_INPUT = 2


def _flag(section: str, field: str) -> str:
    return ALIASES.get((section, field), f"--{section}-{field.replace('_', '-')}")


def _choices(annotation: Any) -> list[str] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is Literal:
            return [str(c) for c in typing.get_args(candidate)]
    return None


def _parse_value(annotation: Any, raw: str) -> Any:
    """Turn a flag's text into what pydantic validates: lists by comma, dicts as JSON."""
    args = typing.get_args(annotation)
    if raw.lower() == "none" and type(None) in args:
        return None
    kinds = {typing.get_origin(a) or a for a in (annotation, *args)}
    if list in kinds:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if dict in kinds:
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected JSON such as '{{\"train\": \"train\", \"test\": \"dev\"}}', got {raw!r} ({exc.msg})") from None
    return raw


def build_parser(workload: str, preset: PipelineConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python flows/{workload}.py",
        description=f"Run the distillery pipeline on the {workload} preset: fetch data, tokenize, fine-tune "
        "the teacher, distil the student, export ONNX, quantize to INT8, evaluate. Every stage is cached "
        "by its inputs; a rerun recomputes only what changed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--store", default=os.environ.get("DISTILLERY_STORE", ".distillery"),
                        help="artifact store root: a folder or fsspec URI (env DISTILLERY_STORE)")
    parser.add_argument("--summary", type=Path, help="write a JSON summary of stages and metrics to this file")
    parser.add_argument("--smoke", action="store_true", help="small data slice and a tiny model: the whole DAG in minutes")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                        help="where training and teacher inference run (sets --teacher-device and --student-device); auto: cuda when torch sees one")
    for section in SECTIONS:
        params: BaseModel = getattr(preset, section)
        group = parser.add_argument_group(f"{section} stage")
        for field, info in type(params).model_fields.items():
            if (section, field) in DERIVED:
                continue
            env = ENVIRONMENT.get((section, field))
            default = getattr(params, field)
            shown = ",".join(map(str, default)) if isinstance(default, list) else json.dumps(default) if isinstance(default, dict) else default
            help_text = (info.description or "") + (f" (env {env})" if env else "")
            group.add_argument(
                _flag(section, field), dest=f"{section}.{field}", metavar=field.upper(),
                default=os.environ.get(env) if env else None,
                choices=_choices(info.annotation),
                help=f"{help_text}; preset: {shown}",
            )
    return parser


def overrides_from_args(preset: PipelineConfig, args: argparse.Namespace) -> tuple[str | None, Overrides]:
    """The data source and the stage parameters given on the command line."""
    overrides: Overrides = {}
    data = None
    if getattr(args, "device", None):
        for section in DEVICE_SECTIONS:
            overrides.setdefault(section, {})["device"] = args.device
    for key, raw in vars(args).items():
        if "." not in key or raw is None:
            continue
        section, field = key.split(".")
        if (section, field) == ("data", "source"):
            data = raw
            continue
        annotation = type(getattr(preset, section)).model_fields[field].annotation
        try:
            overrides.setdefault(section, {})[field] = _parse_value(annotation, raw)
        except ValueError as exc:
            raise DistilleryError(f"{_flag(section, field)}: {exc}") from None
    return data, overrides


def _bad_input(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _quiet_defaults() -> None:
    """Embedded defaults for a laptop run: a temporary Prefect server, no telemetry, calm logs."""
    for name, value in {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 20 s times out on a busy machine
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(name, value)


def format_table(summary: dict) -> str:
    lines = [f"{'stage':<18} {'state':<9} {'seconds':>8}  artifact"]
    for name, stage in summary["stages"].items():
        lines.append(f"{name:<18} {stage['state']:<9} {stage['seconds']:>8.1f}  {stage['artifact'][:12]}")
    lines.append("")
    lines.append(f"{'model':<14} {'accuracy':>8} {'macro-F1':>8} {'p50 ms':>8} {'p95 ms':>8} {'MB':>7}")
    for name, m in summary["metrics"].items():
        lines.append(f"{name:<14} {m['accuracy']:>8.4f} {m['macro_f1']:>8.4f} {m['latency_p50_ms']:>8.2f} "
                     f"{m['latency_p95_ms']:>8.2f} {m['size_bytes'] / 1e6:>7.1f}")
    lines.append("")
    lines.append(f"report: {summary['report']['location']}/report.md")
    return "\n".join(lines)


def main(workload: str, preset: Callable[[], PipelineConfig], argv: list[str] | None = None) -> int:
    _quiet_defaults()
    args = build_parser(workload, preset()).parse_args(argv)
    try:
        data, overrides = overrides_from_args(preset(), args)
        config = build_config(preset(), data, args.smoke, overrides, describe=_flag)
        from flows.pipeline import distillery, preflight  # imports Prefect: after the cheap checks

        preflight(config)
        summary = distillery(workload=workload, data=data, smoke=args.smoke, overrides=overrides, store=args.store)
    except DistilleryError as exc:
        return _bad_input(str(exc))
    print(format_table(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2))
    return 0
