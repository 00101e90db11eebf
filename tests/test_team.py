"""The team set-up, for real: PostgreSQL + Prefect server + Redis + S3 (moto) + two
process workers, all started and stopped by deployments/stack.sh, on loopback ports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO
from flows.pipeline import STEP_NAMES

FIRST_RUN_STEPS = [step for step in STEP_NAMES if step not in ("compare_data", "judge")]  # no production run yet
from teamstack import BIN, deployment_run, query, stack_processes


def test_services_listen_on_loopback_only_and_secrets_stay_out_of_the_repo(stack):
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    for name, port in stack["ports"].items():
        bound = [row[1] for row in listening if int(row[1].split(":")[1], 16) == port and row[3] == "0A"]  # 0A: LISTEN
        assert bound and all(address.startswith("0100007F") for address in bound), (name, port, bound)  # 127.0.0.1
    assert stack["env"]["PREFECT_API_URL"] == f"http://127.0.0.1:{stack['ports']['PREFECT']}/api"
    assert len(stack_processes(stack["dir"])) >= 5  # server, Redis, S3, two workers: what the README test sees gone
    secrets = stack["dir"] / "secrets"
    assert oct(secrets.stat().st_mode)[-3:] == "700" and oct((stack["dir"] / "env").stat().st_mode)[-3:] == "600"
    for secret in secrets.iterdir():
        found = subprocess.run(["git", "grep", "-q", "-F", secret.read_text()], cwd=REPO)
        assert found.returncode == 1, f"{secret.name} appears in the repository"


def test_server_requires_the_auth_string_the_stack_generated(stack):
    import base64
    import urllib.error
    import urllib.request

    api = stack["env"]["PREFECT_API_URL"]

    def call(path: str, method: str = "GET", auth: str | None = None, **headers: str) -> tuple[int, dict]:
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        request = urllib.request.Request(api + path, method=method, headers=headers,
                                         data=b"{}" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    # Nothing in the test's environment set it: the stack generated it, and hands it to clients and workers.
    generated = "distillery:" + (stack["dir"] / "secrets" / "api_password").read_text()
    assert stack["env"]["PREFECT_API_AUTH_STRING"] == generated
    assert call("/admin/version")[0] == 401
    assert call("/admin/version", auth="distillery:guessed")[0] == 401
    assert call("/admin/version", auth=generated)[0] == 200
    # CSRF protection: a state-changing call without the server's CSRF token is refused, even with the auth string.
    assert call("/flows/filter", "POST", auth=generated, **{"Content-Type": "application/json"})[0] == 403
    # CORS admits the UI's own origin only: a page elsewhere cannot call the API from a browser.
    for origin, allowed in ((stack["env"]["PREFECT_UI_URL"], True), ("http://evil.example", False)):
        _, headers = call("/flows/filter", "OPTIONS", Origin=origin, **{"Access-Control-Request-Method": "POST"})
        granted = {k.lower(): v for k, v in headers.items()}.get("access-control-allow-origin")
        assert (granted == origin) == allowed, (origin, granted)


# In the workers' environment: the store is the S3 one, its latest emotion run whole; prints its artifact count.
S3_HOLDS = """
import os
from artifacts.runs import latest_run
from artifacts.store import ArtifactStore
store = ArtifactStore(os.environ["DISTILLERY_STORE"])
assert store.root.startswith("s3://"), store.root
record = latest_run(store, "emotion-smoke")
assert all(store.verify(ref).ok for ref in record.roles.values())
print(len(store.digests()))
"""


def test_two_concurrent_runs_on_two_workers_compute_each_stage_once(stack):
    earlier = {r["id"] for r in query(stack, "emotion")}
    started = time.monotonic()
    runs = [deployment_run(stack, "smoke=true"), deployment_run(stack, "smoke=true")]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    print(f"\nFIGURE two concurrent smoke runs on two workers: {time.monotonic() - started:.1f}s")
    assert all(run.returncode == 0 for run in runs), [o[-2000:] for o in outputs]
    flow_runs = [r for r in query(stack, "emotion") if r["id"] not in earlier]
    assert len(flow_runs) == 2 and all(r["state"] == "Completed" for r in flow_runs), flow_runs
    # One of the two computed, the other found it (neither had a production run to compare with or judge against).
    for stage in FIRST_RUN_STEPS:
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

    # The shared parts did the sharing: Redis took a lock per computed stage (and released it),
    # and the S3 bucket, not some local folder, holds the runs' artifacts.
    import redis

    stats = redis.Redis.from_url(stack["env"]["DISTILLERY_LOCKS"]).info("commandstats")
    assert stats["cmdstat_set"]["calls"] >= len(FIRST_RUN_STEPS) and stats["cmdstat_eval"]["calls"] >= len(FIRST_RUN_STEPS), stats
    in_s3 = subprocess.run([sys.executable, "-c", S3_HOLDS], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert in_s3.returncode == 0 and int(in_s3.stdout) >= len(FIRST_RUN_STEPS), in_s3.stdout + in_s3.stderr

    # Runs asking the worker to run something of theirs: the pool's template fixes command, env and
    # working_dir, and declares no other variable, so the server refuses each such flow run outright.
    marker = stack["dir"] / "injected"
    hostile = {"command": f"touch {marker}",
               "env": {"PYTHONWARNINGS": "ignore::antigravity.Foo::0", "BROWSER": f"sh -c 'touch {marker}' #%s"},
               "working_dir": str(stack["dir"])}
    for variable, value in hostile.items():
        refused = deployment_run(stack, "smoke=true", job_variables={variable: value})
        said = " ".join(refused.communicate(timeout=300)[0].split())  # the CLI wraps its lines
        assert refused.returncode != 0 and f"Additional properties are not allowed ('{variable}' was unexpected)" in said, (
            variable, said[-2000:])
    assert [r for r in query(stack, "emotion") if r["id"] not in earlier | {f["id"] for f in flow_runs}] == []
    third = deployment_run(stack, "smoke=true")
    assert third.communicate(timeout=600)[0] and third.returncode == 0
    assert not marker.exists()
    newest = [r for r in query(stack, "emotion") if r["id"] not in earlier | {f["id"] for f in flow_runs}]
    # Every stage cached; only the run's own report (never cached) was written.
    assert {stage: newest[0]["tasks"][stage] for stage in FIRST_RUN_STEPS} == {stage: "Cached" for stage in FIRST_RUN_STEPS}
    assert newest[0]["tasks"]["report"] == "Completed"


SCHEDULES = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name("distillery/emotion-nightly")
    print(json.dumps([{"cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
                      for s in deployment.schedules]))
"""


def test_nightly_deployment_keeps_its_berlin_schedule_and_the_test_stack_never_fires_it(stack):
    out = subprocess.run([sys.executable, "-c", SCHEDULES], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    # 03:00 Berlin every day, as deployments/prefect.yaml declares; the test stack deploys it inactive.
    assert json.loads(out.stdout) == [{"cron": "0 3 * * *", "timezone": "Europe/Berlin", "active": False}]
    time.sleep(5)  # the scheduler's loop has had its turn
    assert [r for r in query(stack, "emotion-nightly") if r["state"] == "Scheduled"] == []


def stack_command(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DISTILLERY_STACK_DIR": str(tmp_path / "stack"), **env}
    environment.pop("DISTILLERY_WORKERS_AS_ROOT", None)
    environment.update(env)
    return subprocess.run(["bash", str(REPO / "deployments" / "stack.sh"), *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_a_public_bind_with_the_bundled_s3_is_refused_before_anything_starts(tmp_path):
    up = stack_command(tmp_path, "up", "1", DISTILLERY_BIND="0.0.0.0", DISTILLERY_WORKERS_AS_ROOT="1")
    assert up.returncode == 2 and "moto" in up.stderr and "DISTILLERY_S3_ENDPOINT" in up.stderr, up.stderr
    assert list((tmp_path / "stack" / "pids").iterdir()) == []  # nothing was started


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the refusal of root workers: needs to run as root")
def test_workers_as_root_are_refused_unless_allowed(tmp_path):
    for command in (("up", "1"), ("worker", "3")):
        refused = stack_command(tmp_path, *command)
        assert refused.returncode == 2 and "as root" in refused.stderr, refused.stderr
    assert list((tmp_path / "stack" / "pids").iterdir()) == []


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


VERSIONS = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    print(json.dumps({d.name: d.version for d in client.read_deployments()}))
"""


def test_deployments_name_their_code_and_a_worker_at_other_code_refuses_the_run(stack, tmp_path):
    from flows.version import code_tag, code_version, describe

    code = code_version()
    versions = subprocess.run([sys.executable, "-c", VERSIONS], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert versions.returncode == 0, versions.stderr[-2000:]
    assert json.loads(versions.stdout)["emotion"] == describe(code)  # `prefect deploy` took DISTILLERY_CODE from stack.sh env
    # A deployment made from other code: the workers (this checkout) refuse its runs before any work.
    source = (REPO / "deployments" / "prefect.yaml").read_text()
    pinned = source.replace("  - name: emotion\n", "  - name: emotion-elsewhere\n", 1)
    (tmp_path / "prefect.yaml").write_text(pinned)
    elsewhere = "0123456789abcdef" * 2 + "01234567"
    deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(tmp_path / "prefect.yaml"),
                             "--name", "emotion-elsewhere"], cwd=REPO, env={**stack["env"], "DISTILLERY_CODE": elsewhere},
                            capture_output=True, text=True, timeout=300)
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]
    run = deployment_run(stack, "smoke=true", deployment="emotion-elsewhere")
    output = run.communicate(timeout=600)[0]
    assert run.returncode != 0, output[-2000:]
    [refused] = query(stack, "emotion-elsewhere")
    assert refused["state"] == "Failed" and f"the deployment was made from {elsewhere}" in refused["message"], refused
    assert refused["tasks"] == {}  # nothing ran
    # The runs of the real deployment carry their code in their tags.
    assert all(code_tag(code) in r["tags"] for r in query(stack, "emotion") if r["state"] == "Completed")


EVENTS = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    answer = client._client.post("/events/filter", json={"filter": {"event": {"prefix": ["distillery."]}}, "limit": 50})
    answer.raise_for_status()
    print(json.dumps([{"event": e["event"], "resource": e["resource"], "payload": e["payload"]}
                      for e in answer.json()["events"]]))
"""


def test_refusals_are_events_and_the_shipped_automation_calls_its_webhook(stack, tmp_path):
    import http.server
    import threading

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/alerts"
        made = subprocess.run([sys.executable, str(REPO / "deployments" / "automations.py")], cwd=REPO,
                              env={**stack["env"], "DISTILLERY_WEBHOOK_URL": url}, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0 and "distillery.refused" in made.stdout, made.stdout + made.stderr[-2000:]
        # A run the gate refuses (a floor no model reaches): every stage cached, the decision made again.
        refused = deployment_run(stack, "smoke=true", 'overrides={"gate": {"min_accuracy": 1.0}}')
        output = refused.communicate(timeout=600)[0]
        assert refused.returncode == 0, output[-2000:]
        deadline = time.monotonic() + 90
        while not received and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        hook.shutdown()
    assert received, "the automation never called the webhook"
    assert received[0]["event"] == "distillery.refused" and received[0]["workload"] == "emotion-smoke"
    assert any("below the floor 1" in reason for reason in received[0]["payload"]["reasons"])
    events = subprocess.run([sys.executable, "-c", EVENTS], env=stack["env"], capture_output=True, text=True, timeout=120)
    assert events.returncode == 0, events.stderr[-2000:]
    seen = {(e["event"], e["resource"]["prefect.resource.id"]) for e in json.loads(events.stdout)}
    # The first runs of this stack promoted; this one was refused: both read back from the server.
    assert {("distillery.promoted", "distillery.workload.emotion-smoke"),
            ("distillery.refused", "distillery.workload.emotion-smoke")} <= seen, seen
