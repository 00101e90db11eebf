"""The command line's edge, shared by every command (`distillery`'s verbs, `python -m
artifacts`, predict, the benchmarks): one `--store` option, one exit status for bad input,
one way to say it."""

from __future__ import annotations

import argparse
import os
import sys

from artifacts.store import DEFAULT_STORE

EXIT_BAD_INPUT = 2  # every command: bad input, refused before any work, nothing in the store changed
STORE_HELP = "artifact store root: a folder or fsspec URI (env DISTILLERY_STORE)"


def add_store_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str = STORE_HELP) -> None:
    parser.add_argument("--store", default=os.environ.get("DISTILLERY_STORE", DEFAULT_STORE), help=help)


def bad_input(message: str) -> int:
    """Say what is wrong (and how to fix it) on stderr; the exit status for it."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
