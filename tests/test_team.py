"""The team set-up, for real: PostgreSQL + Prefect server + Redis + S3 (moto) + two
process workers, all started and stopped by deployments/stack.sh, on loopback ports."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import OFFLINE, REPO
from flows.pipeline import STAGE_NAMES

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
            out.append({"id": str(run.id), "state": run.state.name, "start": str(run.expected_start_time),
                        "tasks": {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}})
        print(json.dumps(out))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stack_environment(stack_dir: Path, data: Path) -> dict[str, str]:
    env = {**os.environ, **OFFLINE, "DISTILLERY_STACK_DIR": str(stack_dir), "DISTILLERY_PYTHON": sys.executable,
           "DISTILLERY_DATA": str(data), "PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
           "PREFECT_SERVER_API_AUTH_STRING": "distillery:" + os.urandom(8).hex()}
    for name in ("PG", "PREFECT", "REDIS", "S3"):
        env[f"DISTILLERY_{name}_PORT"] = str(free_port())
    for name in ("PREFECT_API_URL", "PREFECT_HOME", "DISTILLERY_STORE", "DISTILLERY_LOCKS"):
        env.pop(name, None)
    return env


def client_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment after `source $STACK/env`, as a client shell has it."""
    exported = subprocess.run(["bash", "-c", f"set -a; source {env['DISTILLERY_STACK_DIR']}/env; env -0"],
                              env=env, capture_output=True, check=True).stdout.decode()
    return dict(item.split("=", 1) for item in exported.split("\0") if "=" in item)


def stack_folder() -> Path:
    """Inside the repository, like the default .stack: PostgreSQL runs as its own user,
    which cannot enter pytest's private temporary folders."""
    return REPO / f".stack-test-{os.urandom(4).hex()}"


@pytest.fixture(scope="module")
def stack(emotion_dir):
    stack_dir = stack_folder()
    env = stack_environment(stack_dir, emotion_dir)
    started = time.monotonic()
    up = subprocess.run(["bash", str(STACK), "up", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    up_seconds = time.monotonic() - started
    try:
        assert up.returncode == 0, up.stdout + up.stderr + "".join(
            f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in (stack_dir / "logs").glob("*.log"))
        client = client_environment(env)
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"],
                                cwd=REPO, env=client, capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        ports = {name: int(env[f"DISTILLERY_{name}_PORT"]) for name in ("PG", "PREFECT", "REDIS", "S3")}
        yield {"dir": stack_dir, "env": client, "ports": ports, "up_seconds": up_seconds}
    finally:
        subprocess.run(["bash", str(STACK), "down"], cwd=REPO, env=env, capture_output=True, timeout=300)
        shutil.rmtree(stack_dir, ignore_errors=True)


def query(stack, deployment: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", QUERY, deployment], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def deployment_run(stack, *params: str) -> subprocess.Popen:
    args = [str(BIN / "prefect"), "deployment", "run", "distillery/emotion", "--watch"]
    for param in params:
        args += ["--param", param]
    return subprocess.Popen(args, cwd=stack["dir"], env=stack["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_services_listen_on_loopback_only_and_secrets_stay_out_of_the_repo(stack):
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    for name, port in stack["ports"].items():
        bound = [row[1] for row in listening if int(row[1].split(":")[1], 16) == port and row[3] == "0A"]  # 0A: LISTEN
        assert bound and all(address.startswith("0100007F") for address in bound), (name, port, bound)  # 127.0.0.1
    assert stack["env"]["PREFECT_API_URL"] == f"http://127.0.0.1:{stack['ports']['PREFECT']}/api"
    secrets = stack["dir"] / "secrets"
    assert oct(secrets.stat().st_mode)[-3:] == "700" and oct((stack["dir"] / "env").stat().st_mode)[-3:] == "600"
    for secret in secrets.iterdir():
        found = subprocess.run(["git", "grep", "-q", "-F", secret.read_text()], cwd=REPO)
        assert found.returncode == 1, f"{secret.name} appears in the repository"


def test_server_requires_its_auth_string(stack):
    import urllib.error
    import urllib.request

    health = stack["env"]["PREFECT_API_URL"] + "/flows/filter"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(health, method="POST", data=b"{}"), timeout=10)
    assert refused.value.code == 401
    assert stack["env"]["PREFECT_API_AUTH_STRING"]  # clients and workers get it from the stack's env


def test_two_concurrent_runs_on_two_workers_compute_each_stage_once(stack):
    runs = [deployment_run(stack, "smoke=true"), deployment_run(stack, "smoke=true")]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs), [o[-2000:] for o in outputs]
    flow_runs = query(stack, "emotion")
    assert len(flow_runs) == 2 and all(r["state"] == "Completed" for r in flow_runs), flow_runs
    for stage in STAGE_NAMES:
        states = sorted(r["tasks"][stage] for r in flow_runs)
        assert states == ["Cached", "Completed"], (stage, states)
    # each worker (own working folder, own PREFECT_HOME) ran one of them
    for worker in ("worker-1", "worker-2"):
        log = (stack["dir"] / "logs" / f"{worker}.log").read_text()
        assert sum(r["id"] in log for r in flow_runs) == 1, worker

    third = deployment_run(stack, "smoke=true")
    assert third.communicate(timeout=600)[0] and third.returncode == 0
    newest = [r for r in query(stack, "emotion") if r["id"] not in {f["id"] for f in flow_runs}]
    assert set(newest[0]["tasks"].values()) == {"Cached"}


def test_nightly_deployment_schedules_runs_in_its_timezone(stack):
    deadline = time.monotonic() + 90
    scheduled = []
    while time.monotonic() < deadline and not scheduled:
        scheduled = [r for r in query(stack, "emotion-nightly") if r["state"] == "Scheduled"]
        time.sleep(3)
    assert scheduled, "the scheduler created no runs for emotion-nightly"
    from datetime import datetime
    from zoneinfo import ZoneInfo

    for run in scheduled:
        start = datetime.fromisoformat(run["start"]).astimezone(ZoneInfo("Europe/Berlin"))
        assert (start.hour, start.minute) == (3, 0), run
        assert start > datetime.now(ZoneInfo("Europe/Berlin"))  # in the future: nothing fires during the test


@pytest.mark.parametrize("kind", ["docker", "kubernetes"])
def test_job_templates_are_valid_base_job_templates(stack, kind):
    path = REPO / "deployments" / "job-templates" / f"{kind}.json"
    template = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(template["variables"])
    declared = set(template["variables"]["properties"])
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    assert used <= declared, used - declared
    jsonschema.validate({}, template["variables"])  # the defaults alone make a valid job
    pool = f"example-{kind}"
    create = subprocess.run([str(BIN / "prefect"), "work-pool", "create", pool, "--type", kind, "--base-job-template", str(path)],
                            env=stack["env"], capture_output=True, text=True, timeout=120)
    assert create.returncode == 0, create.stdout + create.stderr
    inspect = subprocess.run([str(BIN / "prefect"), "work-pool", "inspect", pool], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert "DISTILLERY_STORE" in inspect.stdout


def test_server_restart_during_a_run_loses_no_finished_work(stack):
    """The run finishes, or fails cleanly and a rerun picks up from the cache."""
    params = ["smoke=true", "store=s3://distillery/restart-test", 'overrides={"teacher": {"epochs": 30}}']
    earlier = {r["id"] for r in query(stack, "emotion")}
    logs = [stack["dir"] / "logs" / f"worker-{i}.log" for i in (1, 2)]
    sizes = [log.stat().st_size for log in logs]
    first = deployment_run(stack, *params)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(
            "fine_tune_teacher: " in log.read_text()[size:] for log, size in zip(logs, sizes)):
        time.sleep(0.5)
    restart = subprocess.run(["bash", str(STACK), "restart-server"], cwd=REPO,
                             env={**stack["env"], "DISTILLERY_STACK_DIR": str(stack["dir"])},
                             capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr
    first.communicate(timeout=900)  # the watching client may give up while the server is away
    deadline, interrupted = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        mine = [r for r in query(stack, "emotion") if r["id"] not in earlier]
        if mine and mine[0]["state"] in ("Completed", "Failed", "Crashed"):
            interrupted = mine[0]
            break
        time.sleep(2)
    assert interrupted is not None, "the run neither finished nor failed after the restart"
    print(f"run across the server restart ended {interrupted['state']}")
    again = deployment_run(stack, *params)
    again.communicate(timeout=900)
    assert again.returncode == 0
    rerun = [r for r in query(stack, "emotion") if r["id"] not in earlier | {interrupted["id"]}][0]
    assert rerun["state"] == "Completed"
    assert rerun["tasks"]["fetch_dataset"] == rerun["tasks"]["tokenize"] == "Cached"  # done before the restart, not redone
