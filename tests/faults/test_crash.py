"""Crashes: a SIGKILL mid-training costs at most one checkpoint interval, and a
process killed while writing leaves nothing visible."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

from artifacts.store import ArtifactStore
from conftest import OFFLINE, REPO, run_cli

TRAIN = textwrap.dedent("""
    import sys
    from artifacts.stage import Progress, run_stage
    from artifacts.store import ArtifactStore
    from tasks.stages import fetch, teacher, tokenize
    from tasks.data.sources import DataParams
    store = ArtifactStore(sys.argv[1])
    say = Progress(lambda m: print(m, flush=True), every_seconds=3600)
    d = run_stage(fetch.STAGE, DataParams(source=sys.argv[2], max_train_rows=400, max_eval_rows=50), {}, store, say)
    t = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="tiny", max_length=32), {"dataset": d}, store, say)
    m = run_stage(teacher.STAGE, teacher.TeacherParams(model="tiny", epochs=4, batch_size=8), {"tokens": t}, store, say)
    print("DIGEST", m.digest, flush=True)
""")


def start(args, env, **kw) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def read_until(proc: subprocess.Popen, pattern: str, seen: list[str], timeout: float = 300) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"never saw {pattern!r}:\n" + "".join(seen[-40:]))


def test_sigkill_mid_training_resumes_from_the_last_checkpoint_and_ends_identical(tmp_path, emotion_dir):
    env = {**os.environ, **OFFLINE, "DISTILLERY_CHECKPOINT_SECONDS": "0.5"}
    reference = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "reference"), str(emotion_dir)],
                               cwd=REPO, env={**env, "DISTILLERY_CHECKPOINT_SECONDS": "3600"}, capture_output=True, text=True, timeout=600)
    uninterrupted = re.search(r"DIGEST (\w+)", reference.stdout).group(1)

    store = tmp_path / "store"
    seen: list[str] = []
    victim = start([sys.executable, "-c", TRAIN, str(store), str(emotion_dir)], env)
    read_until(victim, r"checkpoint saved at step", seen)
    saved = int(read_until(victim, r"checkpoint saved at step (\d+)", seen).group(1))
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert [d for d in ArtifactStore(store).digests() if ArtifactStore(store).manifest(d)["stage"] == "fine_tune_teacher"] == []

    rerun = subprocess.run([sys.executable, "-c", TRAIN, str(store), str(emotion_dir)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    found = re.search(r"resumed from the checkpoint at step (\d+)/(\d+)", rerun.stdout)
    resumed, total = int(found.group(1)), int(found.group(2))
    assert resumed >= saved  # at most the steps after the last checkpoint were lost
    print(f"\nFIGURE SIGKILL right after the checkpoint at step {saved}/{total}: resumed at step {resumed}; "
          f"lost only the steps run after it (under one {env['DISTILLERY_CHECKPOINT_SECONDS']} s interval); result bit-identical")
    assert re.search(r"DIGEST (\w+)", rerun.stdout).group(1) == uninterrupted  # bit-identical to a run never killed
    assert not any((store / "checkpoints").iterdir())  # cleared once the artifact is published


def test_killed_pipeline_reruns_only_the_interrupted_stage_onwards(tmp_path, emotion_dir):
    args = ["--smoke", "--data", str(emotion_dir), "--store", str(tmp_path / "store"), "--teacher-epochs", "6"]
    # A short lease: the killed run's lock on fine_tune_teacher lapses in seconds, not the default minute.
    fast = {"DISTILLERY_CHECKPOINT_SECONDS": "1", "DISTILLERY_LOCK_LEASE_SECONDS": "4"}
    env = {**os.environ, **OFFLINE, **fast, "PREFECT_HOME": str(tmp_path / "home")}
    seen: list[str] = []
    victim = start([sys.executable, "flows/emotion.py", *args], env)
    saved = int(read_until(victim, r"fine_tune_teacher: checkpoint saved at step (\d+)", seen, timeout=600).group(1))
    os.killpg(victim.pid, signal.SIGKILL)  # the whole run, temporary Prefect server included
    victim.wait()
    run = run_cli(args, tmp_path, extra_env=fast)
    assert run.code == 0, run.output[-3000:]
    assert run.states()["fetch_dataset"] == run.states()["tokenize_teacher"] == "cached"
    assert run.states()["fine_tune_teacher"] == "computed"
    resumed = int(re.search(r"fine_tune_teacher: resumed from the checkpoint at step (\d+)", run.output).group(1))
    assert resumed >= saved
    print(f"\nFIGURE pipeline killed in fine_tune_teacher after checkpoint {saved}: resumed at {resumed}; "
          f"recomputed {sorted(run.computed())}")


WRITER = textwrap.dedent("""
    import sys, time
    from artifacts.store import ArtifactStore
    store = ArtifactStore(sys.argv[1])
    with store.new_artifact() as out:
        with open(out / "model.safetensors", "wb") as handle:
            handle.write(b"x" * 1_000_000)
            handle.flush()
            print("HALF", flush=True)
            time.sleep(600)
""")


def test_process_killed_while_writing_leaves_no_visible_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    writer = start([sys.executable, "-c", WRITER, str(tmp_path / "store")], {**os.environ})
    read_until(writer, "HALF", [])
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait()
    assert store.digests() == []  # the half-written folder is only in staging/
    assert len([p for p in (tmp_path / "store" / "staging").iterdir() if p.is_dir()]) == 1


def test_gc_leaves_a_live_runs_staging_folder_alone_however_old(tmp_path):
    """A teacher trains for an hour in its staging folder: gc must not delete it under the run."""
    store_dir = tmp_path / "store"
    ArtifactStore(store_dir)
    writer = start([sys.executable, "-c", WRITER, str(store_dir)], {**os.environ})
    read_until(writer, "HALF", [])
    [folder] = [p for p in (store_dir / "staging").iterdir() if p.is_dir()]
    two_hours_ago = time.time() - 7200
    os.utime(folder, (two_hours_ago, two_hours_ago))
    gc = [sys.executable, "-m", "artifacts", "--store", str(store_dir), "gc", "--delete", "--min-age-minutes", "60"]
    subprocess.run(gc, cwd=REPO, check=True, capture_output=True, timeout=120)
    assert (folder / "model.safetensors").exists()  # its writer lives
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait()
    swept = subprocess.run(gc, cwd=REPO, check=True, capture_output=True, text=True, timeout=120)
    assert not folder.exists() and "left by an interrupted run" in swept.stdout
    assert list((store_dir / "staging").iterdir()) == []  # its owner note went with it
