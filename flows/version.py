"""Which code a run ran: the checkout's git commit (and whether its tracked files were edited),
else the installed package's version; and the check that a worker runs the deployment's code.

A deployment is made from one checkout (`prefect deploy`, with `DISTILLERY_CODE` set by
`deployments/stack.sh env` to that checkout's commit, becomes the deployment's version), and
every worker runs the flow from its own checkout (`DISTILLERY_PROJECT_DIR`). Cache keys hash
the stages' code, so a worker with other code cannot reuse another's artifacts by mistake,
but it would compute and promote under a deployment that says something else. So a flow run
of a deployment whose version names a commit refuses to start on a worker at another commit
(or with edited tracked files), naming both; the run record and the run's tags say what ran.
"""

from __future__ import annotations

import os
import re
import subprocess
from importlib import metadata
from pathlib import Path

from tasks.errors import DistilleryError

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([0-9a-f]{40})(-dirty)?$")


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


IMAGE_CODE_ENV = "DISTILLERY_IMAGE_CODE"  # a container image without .git: the commit it was built from


def code_version(repo: Path = REPO) -> dict:
    """{"commit", "dirty", "package"}: outside a git checkout the commit is DISTILLERY_IMAGE_CODE's, else None."""
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no")) if commit else False
    if commit is None and PIN.match(os.environ.get(IMAGE_CODE_ENV, "")):
        commit = os.environ[IMAGE_CODE_ENV][:40]
    try:
        package = metadata.version("distillery")
    except metadata.PackageNotFoundError:
        package = None
    return {"commit": commit, "dirty": dirty, "package": package}


def describe(code: dict) -> str:
    """One word for the code: the commit (with -dirty), else the package version."""
    if code.get("commit"):
        return code["commit"] + ("-dirty" if code.get("dirty") else "")
    return f"package {code.get('package') or 'unknown'}"


def code_tag(code: dict) -> str:
    """The Prefect tag naming the code: code:<12 hex>[-dirty], or code:<package version>."""
    if code.get("commit"):
        return f"code:{code['commit'][:12]}{'-dirty' if code.get('dirty') else ''}"
    return f"code:{code.get('package') or 'unknown'}"


def check_pin(pin: str | None, code: dict) -> str:
    """"" when `code` may run a deployment whose version is `pin`; else why not (a DistilleryError's text).

    A version that names no commit (unset, or a deployment made by hand) pins nothing."""
    match = PIN.match(pin or "")
    if not match or code.get("commit") is None:  # no pin, or code that cannot tell its commit (see IMAGE_CODE_ENV)
        return ""
    if describe(code) == pin:
        return ""
    return (f"this worker runs code {describe(code)} from {REPO}, but the deployment was made from {pin}: "
            f"check out {match.group(1)[:12]} in the worker's DISTILLERY_PROJECT_DIR (or redeploy from this code with "
            f"`eval \"$(deployments/stack.sh env)\"` and `prefect deploy`), so that every worker computes with the code "
            f"the deployment names")


def refuse_other_code(pin: str | None, code: dict) -> None:
    problem = check_pin(pin, code)
    if problem:
        raise DistilleryError(problem)
