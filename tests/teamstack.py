"""The real team stack for tests: PostgreSQL + Prefect server + Redis + S3 (moto) + two
process workers, started and stopped by deployments/stack.sh on free loopback ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import OFFLINE, REPO

STACK = REPO / "deployments" / "stack.sh"
BIN = Path(sys.executable).parent

# Reads one deployment's flow runs and their task-run states from the server as JSON.
QUERY = textwrap.dedent("""
    import json, sys
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterId
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[sys.argv[1]])))
        out = []
        for run in runs:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            out.append({"id": str(run.id), "state": run.state.name, "message": run.state.message or "",
                        "start": str(run.expected_start_time),
                        "started": run.start_time.timestamp() if run.start_time else None,
                        "end": run.end_time.timestamp() if run.end_time else None, "tags": run.tags,
                        "created": run.created.timestamp(),
                        "tasks": {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}})
        print(json.dumps(out))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_environment(stack_dir: Path, data: Path) -> dict[str, str]:
    env = {**os.environ, **OFFLINE, "DISTILLERY_STACK_DIR": str(stack_dir), "DISTILLERY_PYTHON": sys.executable,
           "DISTILLERY_DATA": str(data), "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    # The stack makes its own API auth string; one from the calling shell must not stand in for it.
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if os.geteuid() == 0:  # CI runs as root in a disposable container: the stack refuses root workers otherwise
        env["DISTILLERY_WORKERS_AS_ROOT"] = "1"
    for name in ("PG", "PREFECT", "REDIS", "S3"):
        env[f"DISTILLERY_{name}_PORT"] = str(free_port())
    for name in ("PREFECT_API_URL", "PREFECT_HOME", "DISTILLERY_STORE", "DISTILLERY_LOCKS"):
        env.pop(name, None)
    return env


def stack_processes(stack_dir: Path) -> list[int]:
    """Live processes the stack in stack_dir started: they inherit its DISTILLERY_STACK_DIR
    (pid files prove nothing: `down` deletes them whether or not the process ended)."""
    marker = f"DISTILLERY_STACK_DIR={stack_dir}".encode()
    alive = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if marker in environ and "zombie" not in state:
            alive.append(int(proc.name))
    return alive


def client_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment after `source $STACK/env`, as a client shell has it."""
    exported = subprocess.run(["bash", "-c", f"set -a; source {env['DISTILLERY_STACK_DIR']}/env; env -0"],
                              env=env, capture_output=True, check=True).stdout.decode()
    return dict(item.split("=", 1) for item in exported.split("\0") if "=" in item)


def inactive_schedules(stack_dir: Path) -> Path:
    """deployments/prefect.yaml with its schedules inactive: a suite running across 03:00 must never
    start a full nightly MPNet training on the test stack. Everything else as a team deploys it."""
    source = (REPO / "deployments" / "prefect.yaml").read_text()
    assert source.count("    active: true\n") == 1, "the nightly schedule's `active: true` line moved"
    copy = stack_dir / "prefect.yaml"
    copy.write_text(source.replace("    active: true\n", "    active: false\n"))
    return copy


def run_stack(stack_dir: Path, data: Path):
    """Bring the stack up with two workers and deploy; yields its description; purges it."""
    env = stack_environment(stack_dir, data)
    started = time.monotonic()
    up = subprocess.run(["bash", str(STACK), "up", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    up_seconds = time.monotonic() - started
    try:
        assert up.returncode == 0, up.stdout + up.stderr + "".join(
            f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in (stack_dir / "logs").glob("*.log"))
        client = client_environment(env)
        started = time.monotonic()
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file",
                                 str(inactive_schedules(stack_dir)), "--all"],
                                cwd=REPO, env=client, capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        print(f"\nFIGURE stack up (PostgreSQL, server, Redis, S3, pool, 2 workers): {up_seconds:.1f}s; "
              f"deploy 4 deployments: {time.monotonic() - started:.1f}s")
        ports = {name: int(env[f"DISTILLERY_{name}_PORT"]) for name in ("PG", "PREFECT", "REDIS", "S3")}
        yield {"dir": stack_dir, "env": client, "ports": ports, "up_seconds": up_seconds}
    finally:
        subprocess.run(["bash", str(STACK), "purge"], cwd=REPO, env=env, capture_output=True, timeout=300)


def query(stack, deployment: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", QUERY, deployment], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def deployment_run(stack, *params: str, job_variables: dict | None = None, deployment: str = "emotion") -> subprocess.Popen:
    args = [str(BIN / "prefect"), "deployment", "run", f"distillery/{deployment}", "--watch"]
    for param in params:
        args += ["--param", param]
    for name, value in (job_variables or {}).items():
        args += ["--job-variable", f"{name}={json.dumps(value)}"]
    return subprocess.Popen(args, cwd=stack["dir"], env=stack["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
