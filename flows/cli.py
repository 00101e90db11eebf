"""Command line for the workload flows: flags generated from the typed configuration.

Every stage parameter is a flag `--<stage>-<field>` whose help is the field's
description and whose default is the preset's value, so `--help` documents every
parameter and no flow file repeats one. Values are checked by the same pydantic
models the flow uses, once, before anything starts.

One parser serves `python flows/<preset>.py` (the preset fixed), `distillery run`
(`--preset`, default generic, and `--name`) and `distillery status` (the same flags:
what that run would recompute).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel

from artifacts.edge import add_store_argument, bad_input
from flows.config import SECTIONS, PipelineConfig
from flows.laptop_server import LaptopServer, quiet_defaults
from flows.presets import GENERIC, PRESETS, Overrides, build_config
from tasks.errors import DistilleryError
from tasks.measure.metrics import gap_words

# Short names for the flags people type most.
ALIASES = {("data", "source"): "--data", ("teacher", "model"): "--teacher", ("checks", "allow"): "--data-allow"}
ENVIRONMENT = {("data", "source"): "DISTILLERY_DATA"}
# Set from other parameters, not by hand: the tokenizer from the teacher and the
# student init; teacher inference runs on the teacher's device and precision.
DERIVED = {("tokenize", "tokenizer"), ("soft_labels", "precision"), ("soft_labels", "device")}
# --device sets both training stages' device.
DEVICE_SECTIONS = ("teacher", "student")


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


def build_parser(workload: str, preset: PipelineConfig, prog: str | None = None, choose_preset: bool = False,
                 description: str | None = None, summary: bool = True) -> argparse.ArgumentParser:
    """The flags of a run of `workload` (a preset), its values shown as defaults.

    choose_preset adds --preset (the console's `run` and `status`); summary adds --summary.
    """
    parser = argparse.ArgumentParser(
        prog=prog or f"python flows/{workload}.py",
        description=description or f"Run the distillery pipeline on the {workload} preset: fetch data, tokenize, fine-tune "
        "the teacher, distil the student, export ONNX, quantize to INT8, evaluate. Every stage is cached "
        "by its inputs; a rerun recomputes only what changed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    if choose_preset:
        parser.add_argument("--preset", choices=list(PRESETS), default=GENERIC,
                            help="models, hyper-parameters, and for emotion and sst2 the data source and label set; "
                            "--help after --preset shows that preset's values")
    parser.add_argument("--name", help="the workload's name: store aliases NAME/latest and NAME/report, the report's "
                        "title, the Prefect run's name and tags (lower-case letters, digits and -; default: the preset's "
                        "name; required for the generic preset; a --smoke run goes by NAME-smoke)")
    add_store_argument(parser)
    if summary:
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
                help=f"{help_text}; preset: {shown if shown != '' else 'none'}",
            )
    return parser


def chosen_preset(argv: list[str] | None) -> str:
    """The --preset among `argv` (default generic), read before the full parser is built with its values."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--preset", choices=list(PRESETS), default=GENERIC)
    return peek.parse_known_args(argv)[0].preset


@dataclass(frozen=True)
class RunRequest:
    """What the command line asks of one run, as the flow's parameters."""

    preset: str
    name: str | None
    data: str | None
    smoke: bool
    overrides: Overrides
    store: str

    def config(self) -> PipelineConfig:
        """The run's configuration, every problem a DistilleryError naming the flag to fix."""
        return build_config(PRESETS[self.preset](), self.data, self.smoke, self.overrides, describe=_flag, name=self.name)

    def flow_parameters(self) -> dict[str, Any]:
        return {"workload": self.preset, "name": self.name, "data": self.data, "smoke": self.smoke,
                "overrides": self.overrides, "store": self.store}


def parse_request(argv: list[str] | None, preset: str | None = None, prog: str | None = None,
                  description: str | None = None, summary: bool = True) -> tuple[RunRequest, argparse.Namespace]:
    """Parse a run's flags: of `preset`, or, when None, of the one --preset names."""
    chosen = preset or chosen_preset(argv)
    values = PRESETS[chosen]()
    args = build_parser(chosen, values, prog=prog, choose_preset=preset is None, description=description,
                        summary=summary).parse_args(argv)
    data, overrides = overrides_from_args(values, args)
    return RunRequest(chosen, args.name, data, args.smoke, overrides, args.store), args


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


@contextlib.contextmanager
def flow_server(server: LaptopServer | None) -> Iterator[None]:
    """The flow's API: the booted temporary server, unless Prefect has a server configured
    (a profile's PREFECT_API_URL, which only Prefect's settings know): then that one, as before."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, PREFECT_UI_URL, temporary_settings

    if server is None or PREFECT_API_URL.value():
        if server is not None:
            server.stop()
        yield
        return
    server.wait(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    print(f"Temporary Prefect server on http://127.0.0.1:{server.port} (stopped when the run ends)", file=sys.stderr)
    # No UI on a temporary server: an empty UI URL keeps Prefect from printing a dead "View at" link.
    with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_UI_URL: ""}):
        yield


def format_table(summary: dict) -> str:
    lines = [f"workload {summary['workload']} (preset {summary['preset']}), flow run {summary['flow_run']['name']}, "
             f"labels: {', '.join(summary['labels'])}", ""]
    width = max([18, *map(len, summary["stages"])])  # cache_teacher_features is 22 wide
    lines.append(f"{'stage':<{width}} {'state':<9} {'seconds':>8}  artifact")
    for name, stage in summary["stages"].items():
        lines.append(f"{name:<{width}} {stage['state']:<9} {stage['seconds']:>8.1f}  {stage['artifact'][:12]}")
    lines.append("")
    lines.append(f"{'model':<14} {'accuracy':>8} {'macro-F1':>8} {'p50 ms':>8} {'p95 ms':>8} {'MB':>7}")
    for name, m in summary["metrics"].items():
        lines.append(f"{name:<14} {m['accuracy']:>8.4f} {m['macro_f1']:>8.4f} {m['latency_p50_ms']:>8.2f} "
                     f"{m['latency_p95_ms']:>8.2f} {m['size_bytes'] / 1e6:>7.1f}")
    gap = summary["shortfall"]
    lines.append("")
    lines.append(f"INT8 student on validation: {gap_words(gap['accuracy_gap_points'], gap['macro_f1_gap'])}; worst class "
                 f"{gap['worst_class']['label']!r} F1 {gap['worst_class']['student_f1']:.3f} against "
                 f"{gap['worst_class']['teacher_f1']:.3f}")
    for reason in gap["reasons"]:
        lines.append(f"WARNING: the INT8 student falls short of its teacher: {reason}")
    lines.append("")
    lines.append(f"report: {summary['report']['location']}/report.md")
    return "\n".join(lines)


def main(workload: str, preset: Callable[[], PipelineConfig] | None = None, argv: list[str] | None = None,
         server: LaptopServer | None = None) -> int:
    """`python flows/<workload>.py ARGS`: a run of that preset.

    `preset`, when given, must be the registered one: the flow runs presets by name.
    `server`: the temporary Prefect server the entry point booted (flows/laptop_server.py).
    """
    if preset is not None and preset is not PRESETS.get(workload):
        raise ValueError(f"preset {preset!r} is not the registered preset {workload!r} (flows/presets.py PRESETS)")
    return run_command(argv, preset=workload, server=server)


RUN_DESCRIPTION = (
    "Run a workload: a preset (--preset: emotion and sst2 bring their data source and label set; generic, the "
    "default, brings neither and needs --data) under a name (--name, default the preset's). Fetch data, tokenize, "
    "fine-tune the teacher, distil the student, export ONNX, quantize to INT8, evaluate; every stage is cached by "
    "its inputs, so a rerun recomputes only what changed. --help after --preset shows that preset's values.")


def run_command(argv: list[str] | None, preset: str | None = None, prog: str | None = None,
                server: LaptopServer | None = None) -> int:
    """Check every input, then run the flow and print its table; exit status 2 on bad input.

    preset None: the console's `run`, where --preset chooses it. `server`: a temporary
    server booted ahead (it stops itself when the process exits).
    """
    quiet_defaults()
    try:
        request, args = parse_request(argv, preset, prog, description=None if preset else RUN_DESCRIPTION)
        config = request.config()
        from flows.pipeline import distillery, preflight  # imports Prefect: after the cheap checks

        preflight(config)
    except BaseException as exc:
        if server is not None:
            server.stop()  # refused before the flow: nothing was sent to it, and no boot is left running
        if isinstance(exc, DistilleryError):
            return bad_input(str(exc))
        raise
    try:
        with flow_server(server):
            summary = distillery(**request.flow_parameters(), checked=config.model_dump(mode="json"))
    except DistilleryError as exc:
        return bad_input(str(exc))
    print(format_table(summary))
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=2))
    return 0
