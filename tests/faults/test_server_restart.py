"""The Prefect server restarted during a run: the run finishes, or fails cleanly and a
rerun picks up from the cache."""

import subprocess
import time

from conftest import REPO
from teamstack import STACK, deployment_run, query


def test_server_restart_during_a_run_loses_no_finished_work(stack):
    """The run finishes, or fails cleanly and a rerun picks up from the cache."""
    params = ["smoke=true", "store=s3://distillery/restart-test", 'overrides={"teacher": {"epochs": 12}}']
    earlier = {r["id"] for r in query(stack, "emotion")}
    logs = [stack["dir"] / "logs" / f"worker-{i}.log" for i in (1, 2)]
    sizes = [log.stat().st_size for log in logs]
    first = deployment_run(stack, *params)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(
            "fine_tune_teacher: " in log.read_text()[size:] for log, size in zip(logs, sizes)):
        time.sleep(0.5)
    assert time.monotonic() < deadline, "the run never reached fine_tune_teacher: nothing was in flight to restart under"
    restarted_at = time.time()
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
    # It was still running when the server went down: otherwise this test proved nothing.
    assert interrupted["end"] is None or interrupted["end"] > restarted_at, interrupted
    print(f"run across the server restart ended {interrupted['state']}")
    again = deployment_run(stack, *params)
    again.communicate(timeout=900)
    assert again.returncode == 0
    rerun = [r for r in query(stack, "emotion") if r["id"] not in earlier | {interrupted["id"]}][0]
    assert rerun["state"] == "Completed"
    assert rerun["tasks"]["fetch_dataset"] == rerun["tasks"]["tokenize_teacher"] == "Cached"  # done before the restart, not redone
