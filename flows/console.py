"""The `distillery` command: one entry point, a verb per job, each calling what exists.

    distillery run --name reviews --data ./my-data --data-text-column body --data-label-column stars
    distillery run --preset emotion --data ../shared/data/emotion
    distillery status --name reviews --data ./my-data --student-seed 7   # what that run would recompute
    distillery predict --name reviews "arrived late, works fine"
    distillery report --name reviews [--open]
    distillery promote reviews 3ee42f85f2fb | distillery rollback reviews       # what predict and serve use
    distillery serve --name reviews [--port 8300]                               # HTTP, loopback
    distillery explain --name reviews --data ./my-data --student-seed 7  # status, one line per step
    distillery list | verify | gc                                          # the store (python -m artifacts)

Every verb has --help. The verbs are thin: `run`, `status` and `explain` parse the
workload's flags with flows/cli.py, `status` and `explain` walk the DAG with
flows/explain.py, `predict` is flows/predict.py, `list`, `verify` and `gc` are the cache
command (artifacts/__main__.py). The older entry points (`python flows/emotion.py`,
`python -m artifacts ...`, `python flows/predict.py`) run the same code.
"""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path
from typing import Callable

from artifacts.edge import EXIT_BAD_INPUT, add_store_argument, bad_input
from tasks.errors import DistilleryError

PROG = "distillery"
EXIT_NOT_OPENED = 1
Verb = Callable[[list[str], str], int]  # (arguments after the verb, prog) -> exit status


def run(argv: list[str], prog: str) -> int:
    from flows.laptop_server import start_if_wanted

    server = start_if_wanted(argv)  # boots while the pipeline is imported and checked
    from flows.cli import run_command

    return run_command(argv, prog=prog, server=server)


STATUS_DESCRIPTION = (
    "What `distillery run` with these same flags would do, step by step, without running anything: cached "
    "(an earlier run, of any workload in the store, made this step's artifact from the same inputs), or would "
    "run, with what changed since the step's artifact in the workload's latest run (a parameter, code, a library "
    "version, a data file, an upstream artifact).")


def walk(argv: list[str], prog: str):
    """The steps `distillery run` with these flags would take, cached or not (flows/explain.py); bad input raises."""
    from flows.cli import quiet_defaults, parse_request

    quiet_defaults()
    request, _ = parse_request(argv, prog=prog, description=STATUS_DESCRIPTION, summary=False)
    name = request.config().name  # every bad input refused here, naming the flag, before the DAG is walked
    from artifacts.store import ArtifactStore
    from flows.explain import step_statuses

    return request, name, step_statuses(ArtifactStore(request.store), request.preset, request.data, request.smoke,
                                        request.overrides, request.name)


def status(argv: list[str], prog: str) -> int:
    try:
        request, name, steps = walk(argv, prog)  # name: a smoke run's is <name>-smoke
    except DistilleryError as exc:
        return bad_input(str(exc))
    print(f"workload {name} (preset {request.preset}), store {request.store}")
    width = max([18, *(len(step.step) for step in steps)])
    for step in steps:
        print(f"  {step.step:<{width}} {'cached' if step.cached else 'would run':<10} {step.detail}")
    rerun = [step.step for step in steps if not step.cached]
    print(f"{len(steps) - len(rerun)} of {len(steps)} steps cached" +
          (f"; {len(rerun)} would run: {', '.join(rerun)}" if rerun else "; nothing to recompute"))
    return 0


def explain(argv: list[str], prog: str) -> int:
    """`status` as one line per step, `<step>: cached (...)` or `<step>: would run: <reasons>`."""
    try:
        _, _, steps = walk(argv, prog)
    except DistilleryError as exc:
        return bad_input(str(exc))
    for step in steps:
        print(step.line)
    return 0


def predict(argv: list[str], prog: str) -> int:
    from flows.predict import main

    return main(argv, stdin=sys.stdin, stdout=sys.stdout, prog=prog)  # the streams of now, not of import time


def serve(argv: list[str], prog: str) -> int:
    from flows.serve import main

    return main(argv, prog=prog)


def export(argv: list[str], prog: str) -> int:
    from flows.export import main

    return main(argv, prog=prog)


def store_command(command: str) -> Verb:
    def verb(argv: list[str], prog: str) -> int:
        from artifacts.__main__ import command_main

        return command_main(command, argv, prog)

    return verb


def report(argv: list[str], prog: str) -> int:
    from artifacts.store import ArtifactStore, StoreError

    parser = argparse.ArgumentParser(prog=prog, description="Print where the latest report of a workload is "
                                     "(report.md and its plots, alias NAME/report); --open opens it.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--name", default="emotion", help="the workload's name")
    add_store_argument(parser)
    parser.add_argument("--open", action="store_true", help="open report.md with the desktop's viewer (the browser)")
    args = parser.parse_args(argv)
    store = ArtifactStore(args.store)
    try:
        folder = store.open(store.resolve_alias(f"{args.name}/report"))  # a remote store's is fetched to the local cache
    except StoreError as exc:
        known = sorted(alias.rsplit("/", 1)[0] for alias in store.aliases() if alias.endswith("/report"))
        return bad_input(f"no report for workload {args.name!r} in {store.root} ({exc}); workloads with a report: "
                         f"{', '.join(known) or 'none yet'}. Run it first, e.g. `distillery run --name {args.name} --data PATH`")
    path = Path(folder) / "report.md"
    print(path)
    if args.open and not webbrowser.open(path.resolve().as_uri()):
        print(f"error: found no browser or viewer to open {path}; open it yourself", file=sys.stderr)
        return EXIT_NOT_OPENED
    return 0


def promotion_parser(prog: str, description: str, run: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("name", help="the workload's name")
    if run:
        parser.add_argument("run", help="the run to serve: a run record's digest or unique prefix (6+ characters), or an "
                                        "alias such as NAME/latest")
    add_store_argument(parser)
    return parser


def promote(argv: list[str], prog: str) -> int:
    """Make a run the workload's production run, by hand, through the promotion log and its lock."""
    from artifacts.promotions import promote as promote_run
    from artifacts.runs import RUN_KIND, find_run, latest_run
    from artifacts.store import ArtifactRef, ArtifactStore, StoreError

    args = promotion_parser(prog, "Serve RUN as NAME's production model (alias NAME/production), by hand; "
                                  "logged in the store's promotion log", run=True).parse_args(argv)
    store = ArtifactStore(args.store)
    try:
        latest_run(store, args.name)  # an unknown workload is refused before anything else
        record = find_run(store, args.run)
        entry = promote_run(store, args.name, ArtifactRef(kind=RUN_KIND, digest=record.digest), by="hand")
    except StoreError as exc:
        return bad_input(str(exc))
    print(f"{args.name}/production -> run {entry['run'][:12]} (was {(entry['replaced'] or 'none')[:12]}); "
          f"promotion log entry {entry['seq']}")
    from flows import events

    events.emit(events.PROMOTED, args.name, {"by": entry["by"], "replaced": entry["replaced"], "seq": entry["seq"]},
                run=entry["run"], drain=True)
    return 0


def rollback(argv: list[str], prog: str) -> int:
    from artifacts.promotions import rollback as rollback_run
    from artifacts.runs import latest_run
    from artifacts.store import ArtifactStore, StoreError

    args = promotion_parser(prog, "Serve NAME's previous production run again (the one before the current one in "
                                  "the promotion log); logged like a promotion", run=False).parse_args(argv)
    store = ArtifactStore(args.store)
    try:
        latest_run(store, args.name)
        entry = rollback_run(store, args.name, by="hand")
    except StoreError as exc:
        return bad_input(str(exc))
    print(f"{args.name}/production -> run {entry['run'][:12]} (rolled back from {entry['replaced'][:12]}); "
          f"promotion log entry {entry['seq']}")
    from flows import events

    events.emit(events.ROLLED_BACK, args.name, {"by": entry["by"], "rolled_back": entry["replaced"], "seq": entry["seq"]},
                run=entry["run"], drain=True)
    return 0


# verb -> (what runs it, one line for `distillery --help`)
VERBS: dict[str, tuple[Verb, str]] = {
    "run": (run, "run a workload: --preset emotion|sst2|generic, --name NAME, --data PATH, any stage flag"),
    "status": (status, "per step, whether `run` with the same flags would be cached or recompute, and why"),
    "predict": (predict, "classify texts with a workload's production INT8 model (--model for another run)"),
    "serve": (serve, "answer HTTP requests with a workload's production INT8 model, switching on promotion"),
    "export": (export, "write a workload's production INT8 model, tokenizer, config and model card to a folder"),
    "promote": (promote, "serve a run as a workload's production model, by hand (logged)"),
    "rollback": (rollback, "serve a workload's previous production model again (logged)"),
    "report": (report, "print the path of a workload's latest report; --open opens it"),
    "explain": (explain, "status, one line per step: why each would (not) rerun"),
    "list": (store_command("list"), "list the store's artifacts, sizes and what references each"),
    "verify": (store_command("verify"), "check every artifact and promotion log entry; --repair deletes or moves aside"),
    "gc": (store_command("gc"), "list (or --delete) what nothing references"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    verbs = "\n".join(f"  {name:<{width}}  {help_text}" for name, (_, help_text) in VERBS.items())
    return (f"usage: {PROG} VERB [OPTIONS]   ({PROG} VERB --help for a verb's options)\n\n"
            f"Distil a labelled text data set into a small, fast INT8 classifier; every stage cached by its inputs.\n\n"
            f"verbs:\n{verbs}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_BAD_INPUT
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"{PROG}: error: unknown verb {verb!r}: use one of {', '.join(VERBS)}\n\n{usage()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return VERBS[verb][0](rest, f"{PROG} {verb}")
    except SystemExit as exc:  # argparse: --help (0) or a bad flag (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
