"""Scheduled retraining on the real team stack (PostgreSQL server, process workers, S3 store,
Redis locks, as deployments/stack.sh starts them): day-by-day data drops into one data folder,
each retrained by the same deployment with the same parameters, as a nightly schedule runs it.

Day 1 -> promoted; day 2 a new shard of good rows -> recomputed from fetch_dataset and promoted
after the gate; the same data again -> all cached, nothing promoted; day 3 drops, each on its own
(a class removed, half the rows gone, test rows copied into train; three runs at once) -> stopped before training,
production and the served answers unchanged. Then rollback and promotion by hand, and `serve`
switching models under load, all against the shared S3 store. Smoke-sized models on real emotion
rows. (The runs go through `prefect deployment run`: the worker runs them exactly as it runs a
scheduled one; the test stack's schedules are inactive, tests/teamstack.py.)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from teamstack import deployment_run, free_port, query

NAME = "daily"
RUN_NAME = f"{NAME}-smoke"  # what the store and Prefect know the smoke runs by: never daily/production
PROBES = ["i feel wonderful today", "this is so unfair and i am furious", "i am scared of the dark"]


def emotion_rows(emotion_dir: Path, split: str) -> tuple[str, list[str]]:
    lines = (emotion_dir / f"{split}.txt").read_text().splitlines()
    return lines[0], lines[1:]


def write_drop(root: Path, shards: dict[str, list[str]], validation: list[str], test: list[str], header: str) -> None:
    """The data folder as a team's export job leaves it: train/ one file per day, val and test files."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "train").mkdir(parents=True)
    for name, rows in shards.items():
        (root / "train" / f"{name}.txt").write_text("\n".join([header, *rows]) + "\n")
    (root / "val.txt").write_text("\n".join([header, *validation]) + "\n")
    (root / "test.txt").write_text("\n".join([header, *test]) + "\n")


def console(stack, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`distillery ARGV` on a team member's shell (the stack's S3 store and Redis)."""
    return subprocess.run([sys.executable, "-m", "flows.console", *argv], cwd=stack["dir"],
                          env={**stack["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                          capture_output=True, text=True, timeout=timeout)


def alias(stack, name: str) -> str:
    out = subprocess.run([sys.executable, "-c", "import os, sys; from artifacts.store import ArtifactStore; "
                          "print(ArtifactStore(os.environ['DISTILLERY_STORE']).resolve_alias(sys.argv[1]).digest)", name],
                         env={**stack["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def promotion_log(stack) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", "import json, os; from artifacts.store import ArtifactStore; "
                          "from artifacts.promotions import entries; "
                          f"print(json.dumps(entries(ArtifactStore(os.environ['DISTILLERY_STORE']), '{RUN_NAME}')))"],
                         env={**stack["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def served(stack, model: str | None = None) -> list[dict]:
    run = console(stack, "predict", *PROBES, *(["--model", model] if model else ["--name", RUN_NAME]))
    assert run.returncode == 0, run.stderr[-2000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


def start(stack, data: Path) -> subprocess.Popen:
    """A retraining by the deployment, with the parameters a nightly schedule would hold."""
    return deployment_run(stack, f"name={NAME}", f"data={data}", "smoke=true", deployment="generic")


def finish(stack, run: subprocess.Popen) -> dict:
    """The server's record of a started retraining, once it ended."""
    output = run.communicate(timeout=900)[0]
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", output)
    assert flow_run_id, output[-2000:]
    [flow_run] = [r for r in query(stack, "generic") if r["id"] == flow_run_id[1]]
    return {**flow_run, "code": run.returncode, "output": output}


def nightly(stack, data: Path) -> dict:
    return finish(stack, start(stack, data))


@pytest.fixture(scope="module")
def days(stack, tmp_path_factory, emotion_dir):
    tmp = tmp_path_factory.mktemp("days")
    header, train = emotion_rows(emotion_dir, "train")
    validation, test = emotion_rows(emotion_dir, "val")[1][:120], emotion_rows(emotion_dir, "test")[1][:120]
    day1, day2 = train[:280], train[280:560]
    no_fear = lambda rows: [r for r in rows if not r.endswith(";fear")]  # noqa: E731
    drops = {
        "day1": ({"day1": day1}, validation, test),
        "day2": ({"day1": day1, "day2": day2}, validation, test),
        "class_removed": ({"day1": no_fear(day1), "day2": no_fear(day2)}, no_fear(validation), no_fear(test)),
        "half_gone": ({"day1": day1}, validation, test),
        "test_in_train": ({"day1": day1, "day2": day2, "day3": test}, validation, test),
    }
    data = tmp / "exports"
    results: dict = {}
    for day in ("day1", "day2"):
        write_drop(data, *drops[day], header)
        results[day] = nightly(stack, data)
        results[f"{day}_production"] = alias(stack, f"{RUN_NAME}/production")
    results["day2_served"] = served(stack)
    results["unchanged"] = nightly(stack, data)
    results["latest"] = alias(stack, f"{RUN_NAME}/latest")
    results["exports"] = data  # day 2's drop, as the next scheduled run would find it
    # Day 3: each broken drop on its own (a folder of its own), all three at once on the two workers.
    started = {}
    for drop in ("class_removed", "half_gone", "test_in_train"):
        write_drop(tmp / drop, *drops[drop], header)
        started[drop] = start(stack, tmp / drop)
    results["broken"] = {drop: finish(stack, run) for drop, run in started.items()}
    return results


def tasks_of(run: dict) -> dict[str, str]:
    return {name: state for name, state in run["tasks"].items() if name != "report"}


def test_day1_and_a_good_day2_shard_are_promoted_by_the_deployment(stack, days):
    day1, day2 = days["day1"], days["day2"]
    assert day1["code"] == 0 and day1["state"] == "Completed", day1["output"][-3000:]
    assert "promoted" in day1["tags"] and f"workload:{RUN_NAME}" in day1["tags"]
    # Smoke runs (--param smoke=true) go by daily-smoke: the real workload's aliases do not exist.
    listed = subprocess.run([sys.executable, "-c", "import os; from artifacts.store import ArtifactStore; "
                             "print(' '.join(ArtifactStore(os.environ['DISTILLERY_STORE']).aliases()))"],
                            env={**stack["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and not {f"{NAME}/latest", f"{NAME}/production"} & set(listed.stdout.split())
    assert day2["code"] == 0 and day2["state"] == "Completed", day2["output"][-3000:]
    assert "promoted" in day2["tags"] and "not-promoted" not in day2["tags"]
    tasks = tasks_of(day2)
    assert tasks["fetch_dataset"] == tasks["check_data"] == tasks["compare_data"] == tasks["judge"] == "Completed"
    assert days["day2_production"] != days["day1_production"]
    log = promotion_log(stack)
    assert [(e["action"], e["run"], e["replaced"], e["by"]) for e in log] == [
        ("promote", days["day1_production"], None, "automatic"),
        ("promote", days["day2_production"], days["day1_production"], "automatic")]
    assert log[1]["decision"]["paired"]["rows"] == 120


def test_unchanged_data_is_all_cached_promotes_nothing_and_takes_seconds(stack, days):
    again = days["unchanged"]
    assert again["code"] == 0 and again["state"] == "Completed", again["output"][-3000:]
    assert set(tasks_of(again).values()) == {"Cached"} and "judge" not in again["tasks"]
    assert "not-promoted" in again["tags"]
    seconds = again["end"] - again["started"]
    print(f"\nFIGURE unchanged scheduled run on the team stack: {seconds:.1f}s from start to end on the server")
    assert seconds < 10
    assert alias(stack, f"{RUN_NAME}/production") == days["day2_production"] and len(promotion_log(stack)) == 2


@pytest.mark.parametrize("drop, anomaly", [("class_removed", "classes_lost"), ("half_gone", "rows_fell"),
                                           ("test_in_train", "overlap")])
def test_a_broken_drop_stops_before_training_and_production_keeps_serving(stack, days, drop, anomaly):
    run = days["broken"][drop]
    assert run["state"] == "Failed" and run["code"] != 0
    assert {"data-anomaly", "not-promoted"} <= set(run["tags"])
    # The flow run's state on the server says why, as the UI shows it.
    assert f"{anomaly}:" in run["message"] and f"--data-allow {anomaly}" in run["message"], run["message"]
    assert "tokenize_teacher" not in run["tasks"] and "fine_tune_teacher" not in run["tasks"]
    assert alias(stack, f"{RUN_NAME}/production") == days["day2_production"]
    assert alias(stack, f"{RUN_NAME}/latest") == days["latest"]
    assert served(stack) == days["day2_served"]


def test_serve_switches_to_a_rolled_back_model_under_load_without_failing_a_request(stack, days, tmp_path):
    import httpx

    before, after = days["day2_production"], days["day1_production"]
    assert alias(stack, f"{RUN_NAME}/production") == before
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "flows.console", "serve", "--name", RUN_NAME, "--port", str(port),
                               "--poll-seconds", "0.2"], cwd=stack["dir"],
                              env={**stack["env"], "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                              stdout=(tmp_path / "serve.log").open("w"), stderr=subprocess.STDOUT, text=True)
    log = lambda: (tmp_path / "serve.log").read_text()[-3000:]  # noqa: E731
    url = f"http://127.0.0.1:{port}"
    answers, failures, stop = [], [], threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    sent = time.monotonic()
                    response = http.post(f"{url}/predict", json={"texts": PROBES})
                    (answers.append((time.monotonic(), response.json(), sent)) if response.status_code == 200
                     else failures.append(response.status_code))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                assert httpx.get(f"{url}/health", timeout=2).json()["run"] == before
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, log()
                time.sleep(0.3)
        clients = [threading.Thread(target=client) for _ in range(8)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        rolled = console(stack, "rollback", RUN_NAME)
        assert rolled.returncode == 0, rolled.stderr
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health", timeout=5).json()["run"] != after:
            assert time.monotonic() < deadline, "serve never switched to the rolled-back model: " + log()
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for c in clients:
            c.join(60)
        health = httpx.get(f"{url}/health", timeout=5).json()
        bad = httpx.post(f"{url}/predict", json={"texts": ["fine", " "]})
    finally:
        stop.set()
        server.terminate()
        server.wait(30)
    assert failures == [] and len(answers) > 20
    runs = [a["run"] for _, a, _ in sorted(answers, key=lambda x: x[0])]
    assert runs[0] == before and runs[-1] == after and health["swaps"] == 1
    # Once switched, never back: no request sent after the first answer from the new model got the
    # old one. (By arrival alone two answers finishing together can swap places in the client threads.)
    switched = min(received for received, a, _ in answers if a["run"] == after)
    assert [sent for _, a, sent in answers if a["run"] == before and sent > switched] == []
    assert health["batches"] < len(answers)  # concurrent requests were scored together
    assert [r["label"] for r in max(answers, key=lambda x: x[0])[1]["results"]] == [r["label"] for r in served(stack, after)]
    assert bad.status_code == 422 and "text 1: empty" in bad.json()["detail"]["message"]


def test_rollback_and_promotion_by_hand_go_through_the_log(stack, days):
    production = alias(stack, f"{RUN_NAME}/production")
    assert production == days["day1_production"]  # rolled back by the serve test
    # The rollback sticks: the next scheduled run on day 2's data (every stage cached, its cached
    # judgement against day 1's model "promote") does not bring the rolled-back model back.
    rerun = nightly(stack, days["exports"])
    assert rerun["code"] == 0 and "not-promoted" in rerun["tags"] and "promoted" not in rerun["tags"], rerun["tags"]
    assert alias(stack, f"{RUN_NAME}/production") == days["day1_production"]
    refused = console(stack, "rollback", RUN_NAME)
    assert refused.returncode == 2 and "no earlier production run" in refused.stderr
    promoted = console(stack, "promote", RUN_NAME, days["day2_production"][:10])
    assert promoted.returncode == 0, promoted.stderr
    assert alias(stack, f"{RUN_NAME}/production") == days["day2_production"] and served(stack) == days["day2_served"]
    log = promotion_log(stack)
    assert [e["action"] for e in log] == ["promote", "promote", "rollback", "promote"]
    assert log[2]["by"].startswith("hand:") and log[3]["replaced"] == days["day1_production"]
