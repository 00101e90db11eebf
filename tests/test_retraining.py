"""Scheduled retraining on a laptop store: day-by-day data drops through the real command.

Day 1 data -> promoted; day 2 a new shard of good rows -> recomputed from fetch_dataset
and promoted after the gate; the same data again -> all cached, nothing promoted; day 3
drops, each on its own (a class removed, half the rows gone, test rows copied into
train) -> stopped before training, production and the served answers unchanged. Then
rollback and promote by hand, through the promotion log. Smoke-sized models on real
emotion rows; the team-stack version of this loop is tests/test_team.py's.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OFFLINE, REPO, tree_state
from artifacts.promotions import entries, production_alias
from artifacts.store import ArtifactStore
from flows import console, predict

NAME = "daily"
PROBES = ["i feel wonderful today", "this is so unfair and i am furious", "i am scared of the dark"]


def emotion_rows(emotion_dir: Path, split: str) -> tuple[str, list[str]]:
    lines = (emotion_dir / f"{split}.txt").read_text().splitlines()
    return lines[0], lines[1:]


def drop(root: Path, shards: dict[str, list[str]], validation: list[str], test: list[str], header: str) -> Path:
    """A data folder as a team's export job writes it: train/ as one file per day, val and test files."""
    (root / "train").mkdir(parents=True)
    for name, rows in shards.items():
        (root / "train" / f"{name}.txt").write_text("\n".join([header, *rows]) + "\n")
    (root / "val.txt").write_text("\n".join([header, *validation]) + "\n")
    (root / "test.txt").write_text("\n".join([header, *test]) + "\n")
    return root


def run(tmp: Path, data: Path, store: Path, *flags: str) -> tuple[int, str, dict | None]:
    summary = tmp / f"summary-{os.urandom(4).hex()}.json"
    env = {**os.environ, **OFFLINE, "PREFECT_HOME": str(tmp / f"home-{os.urandom(4).hex()}"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-m", "flows.console", "run", "--preset", "generic", "--smoke", "--name", NAME,
                           "--data", str(data), "--store", str(store), "--summary", str(summary), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(summary.read_text()) if summary.exists() else None


def served(store: Path) -> list[str]:
    out = io.StringIO()
    assert predict.main([*PROBES, "--name", NAME, "--store", str(store)], stdout=out) == 0
    return [json.loads(line)["scores"] for line in out.getvalue().splitlines()]


def production(store: Path) -> str:
    return ArtifactStore(store).resolve_alias(production_alias(NAME)).digest


@pytest.fixture(scope="module")
def days(tmp_path_factory, emotion_dir):
    tmp = tmp_path_factory.mktemp("days")
    header, train = emotion_rows(emotion_dir, "train")
    _, validation = emotion_rows(emotion_dir, "val")
    _, test = emotion_rows(emotion_dir, "test")
    validation, test = validation[:120], test[:120]
    day1, day2 = train[:280], train[280:560]
    no_fear = lambda rows: [r for r in rows if not r.endswith(";fear")]  # noqa: E731
    folders = {
        "day1": drop(tmp / "day1", {"day1": day1}, validation, test, header),
        "day2": drop(tmp / "day2", {"day1": day1, "day2": day2}, validation, test, header),
        "class_removed": drop(tmp / "class", {"day1": no_fear(day1), "day2": no_fear(day2)}, no_fear(validation),
                              no_fear(test), header),
        "half_gone": drop(tmp / "half", {"day1": day1}, validation, test, header),
        "test_in_train": drop(tmp / "leak", {"day1": day1, "day2": day2, "day3": test}, validation, test, header),
    }
    store = tmp / "store"
    results = {"day1": run(tmp, folders["day1"], store)}
    results["day1_production"] = production(store)
    results["day2"] = run(tmp, folders["day2"], store)
    results["day2_production"], results["day2_served"] = production(store), served(store)
    results["unchanged"] = run(tmp, folders["day2"], store)
    return tmp, store, folders, results


def test_day1_is_promoted_and_day2_recomputes_from_fetch_and_is_promoted_after_the_gate(days):
    _, store, _, results = days
    code, output, day1 = results["day1"]
    assert code == 0, output[-3000:]
    assert day1["promotion"]["outcome"] == "promoted" and day1["promotion"]["production_run"] is None
    assert "promoted" in day1["flow_run"]["tags"]
    code, output, day2 = results["day2"]
    assert code == 0, output[-3000:]
    assert day2["stages"]["fetch_dataset"]["state"] == "computed"
    assert day2["stages"]["compare_data"]["state"] == "computed" and day2["stages"]["judge"]["state"] == "computed"
    assert day2["promotion"]["outcome"] == "promoted", day2["promotion"]["reasons"]
    assert day2["promotion"]["production_run"] == results["day1_production"] == day1["run"]
    assert day2["promotion"]["paired"]["rows"] == 120
    assert results["day2_production"] == day2["run"]
    log = entries(ArtifactStore(store), NAME)
    assert [(e["action"], e["run"], e["replaced"], e["by"]) for e in log] == [
        ("promote", day1["run"], None, "automatic"), ("promote", day2["run"], day1["run"], "automatic")]
    assert log[1]["decision"]["paired"]["p_value"] == day2["promotion"]["paired"]["p_value"]
    report = (Path(day2["report"]["location"]) / "report.md").read_text()
    assert "## Promoted to production" in report and "p = " in report


def test_unchanged_data_is_all_cached_and_promotes_nothing(days):
    _, store, _, results = days
    code, output, again = results["unchanged"]
    assert code == 0, output[-3000:]
    assert {s["state"] for s in again["stages"].values()} == {"cached"}, again["stages"]
    assert "compare_data" not in again["stages"] and "judge" not in again["stages"]
    assert again["promotion"]["outcome"] == "not-promoted"
    assert "already in production" in again["promotion"]["reasons"][0]
    assert production(store) == results["day2_production"]
    assert len(entries(ArtifactStore(store), NAME)) == 2


@pytest.mark.parametrize("drop_name, anomaly", [("class_removed", "classes_lost"), ("half_gone", "rows_fell"),
                                                ("test_in_train", "overlap")])
def test_a_broken_drop_stops_before_training_and_production_keeps_serving(days, drop_name, anomaly):
    tmp, store, folders, results = days
    latest = ArtifactStore(store).resolve_alias(f"{NAME}/latest")
    code, output, summary = run(tmp, folders[drop_name], store)
    assert code == 2 and summary is None, output[-3000:]
    assert f"{anomaly}:" in output and f"--data-allow {anomaly}" in output and "production is unchanged" in output
    for later in ("tokenize_teacher", "fine_tune_teacher"):
        assert f"Task run '{later}" not in output
    assert production(store) == results["day2_production"]
    assert ArtifactStore(store).resolve_alias(f"{NAME}/latest") == latest
    assert served(store) == results["day2_served"]
    assert len(entries(ArtifactStore(store), NAME)) == 2


def test_rollback_and_promotion_by_hand_go_through_the_log(days, capsys):
    _, store, _, results = days
    assert console.main(["rollback", NAME, "--store", str(store)]) == 0
    assert production(store) == results["day1_production"]
    assert served(store) != results["day2_served"] or results["day1_production"] == results["day2_production"]
    state = tree_state(store)
    assert console.main(["rollback", NAME, "--store", str(store)]) == 2  # day 1 was the first production
    assert "no earlier production run" in capsys.readouterr().err
    assert tree_state(store) == state
    assert console.main(["promote", NAME, results["day2_production"][:10], "--store", str(store)]) == 0
    assert production(store) == results["day2_production"] and served(store) == results["day2_served"]
    log = entries(ArtifactStore(store), NAME)
    assert [e["action"] for e in log] == ["promote", "promote", "rollback", "promote"]
    assert log[2]["by"].startswith("hand:") and log[3]["replaced"] == results["day1_production"]
