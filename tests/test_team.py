"""The team set-up, for real: PostgreSQL + Prefect server + Redis + S3 (moto) + two
process workers, all started and stopped by deployments/stack.sh, on loopback ports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO
from flows.pipeline import STEP_NAMES
from teamstack import BIN, deployment_run, query


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
    earlier = {r["id"] for r in query(stack, "emotion")}
    started = time.monotonic()
    runs = [deployment_run(stack, "smoke=true"), deployment_run(stack, "smoke=true")]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    print(f"\nFIGURE two concurrent smoke runs on two workers: {time.monotonic() - started:.1f}s")
    assert all(run.returncode == 0 for run in runs), [o[-2000:] for o in outputs]
    flow_runs = [r for r in query(stack, "emotion") if r["id"] not in earlier]
    assert len(flow_runs) == 2 and all(r["state"] == "Completed" for r in flow_runs), flow_runs
    for stage in STEP_NAMES:
        states = sorted(r["tasks"][stage] for r in flow_runs)
        assert states == ["Cached", "Completed"], (stage, states)
    # each worker (own working folder, own PREFECT_HOME) ran one of them, on its share
    # of the machine's cores: its flow runs inherit OMP_NUM_THREADS, which torch obeys
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for worker in ("worker-1", "worker-2"):
        log = (stack["dir"] / "logs" / f"{worker}.log").read_text()
        assert sum(r["id"] in log for r in flow_runs) == 1, worker
        pid = (stack["dir"] / "pids" / f"{worker}.pid").read_text().strip()
        assert f"OMP_NUM_THREADS={share}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"), worker

    third = deployment_run(stack, "smoke=true")
    assert third.communicate(timeout=600)[0] and third.returncode == 0
    newest = [r for r in query(stack, "emotion") if r["id"] not in earlier | {f["id"] for f in flow_runs}]
    # Every stage cached; only the run's own report (never cached) was written.
    assert {stage: newest[0]["tasks"][stage] for stage in STEP_NAMES} == {stage: "Cached" for stage in STEP_NAMES}
    assert newest[0]["tasks"]["report"] == "Completed"


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
