"""The README's commands work as written."""

import os
import re
import subprocess

from artifacts.store import ArtifactStore
from conftest import OFFLINE, REPO
from teamstack import stack_environment, stack_processes

README = (REPO / "README.md").read_text()


def section_block(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_make_targets_named_in_the_readme_exist():
    for target in ("run", "test", "smoke"):
        assert f"make {target}" in README
        dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
    assert "flows/emotion.py" in subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True).stdout
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_make_smoke_runs_the_whole_dag(tmp_path):
    run = subprocess.run(["make", "smoke", f"STORE={tmp_path / 'store'}", f"DATA={REPO.parent / 'shared' / 'data' / 'emotion'}"],
                         cwd=REPO, env={**os.environ, **OFFLINE, "PREFECT_HOME": str(tmp_path / "home")},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"^evaluate\s+computed", run.stdout, re.M), run.stdout[-2000:]
    # A smoke run is no production run: it goes by emotion-smoke, and `make run`'s aliases do not exist.
    aliases = ArtifactStore(tmp_path / "store").aliases()
    assert "emotion-smoke/production" in aliases and not {"emotion/latest", "emotion/production"} & set(aliases)


def test_run_on_a_prefect_server_section_works_as_written(tmp_path, emotion_dir):
    block = section_block("Run on a Prefect server")
    assert "stack.sh up" in block and "deployment run" in block and "stack.sh down" in block
    stack_dir = tmp_path / "stack"
    env = stack_environment(stack_dir, emotion_dir)
    env.pop("DISTILLERY_DATA")  # the block sets it itself
    try:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in (stack_dir / "logs").glob("*.log"))
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + logs
        assert "Flow run finished successfully in 'Completed'" in run.stdout
        assert stack_processes(stack_dir) == []  # everything stopped
    finally:
        subprocess.run(["bash", str(REPO / "deployments" / "stack.sh"), "purge"], cwd=REPO, env=env, capture_output=True, timeout=300)
