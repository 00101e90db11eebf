"""Identical runs started together compute each stage exactly once."""

import threading

from conftest import run_cli
from flows.pipeline import STEP_NAMES


def test_three_identical_concurrent_runs_compute_each_stage_once(tmp_path, emotion_dir):
    store = tmp_path / "store"
    args = ["--smoke", "--data", str(emotion_dir), "--store", str(store), "--evaluate-latency-sentences", "5"]
    runs = [None] * 3

    def start(i):
        runs[i] = run_cli(args, tmp_path)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in runs if r.code != 0]
    for r in failed:  # pytest shortens assertion messages; captured output is shown whole
        print(f"exit {r.code}:\n{r.output[-6000:]}")
    assert not failed, [r.code for r in failed]
    for stage in [s for s in STEP_NAMES if s not in ("compare_data", "judge")]:  # none had a production run
        states = sorted(r.states()[stage] for r in runs)
        assert states == ["cached", "cached", "computed"], (stage, states)
    assert len({r.summary["stages"]["quantize"]["artifact"] for r in runs}) == 1
    assert not list((store / "locks").glob("*.lock"))  # every lease released
    # The three made one model: the first to finish is promoted, the others find it already in production.
    assert sorted(r.summary["promotion"]["outcome"] for r in runs) == ["not-promoted", "not-promoted", "promoted"]
