"""Shared fixtures: real data slices from ../shared/data, offline settings, CLI runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real data lives beside the repository, never inside it; override with DISTILLERY_TEST_DATA.
DATA_ROOT = Path(os.environ.get("DISTILLERY_TEST_DATA", REPO.parent / "shared" / "data"))
EMOTION_LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_EVALUATE_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE)


@pytest.fixture(scope="session")
def emotion_dir() -> Path:
    path = DATA_ROOT / "emotion"
    if not (path / "train.txt").exists():
        pytest.fail(f"real emotion data not found at {path}: set DISTILLERY_TEST_DATA to the shared data folder")
    return path


def write_emotion_slice(source: Path, target: Path, rows: dict[str, int]) -> Path:
    """The first N data rows of each real emotion file, header kept, same format."""
    target.mkdir(parents=True, exist_ok=True)
    for name, count in rows.items():
        lines = (source / f"{name}.txt").read_text().splitlines()
        (target / f"{name}.txt").write_text("\n".join(lines[: count + 1]) + "\n")
    return target


def sst2_phrases() -> list[str]:
    """Every real SST-2 train phrase, spaces normalised as fetch_dataset normalises them."""
    return [" ".join(line.split("\t")[0].split()) for line in (DATA_ROOT / "sst2" / "train.tsv").read_text().splitlines()[1:]]


@pytest.fixture
def emotion_slice(tmp_path: Path, emotion_dir: Path) -> Path:
    return write_emotion_slice(emotion_dir, tmp_path / "emotion", {"train": 300, "val": 60, "test": 60})


def tree_state(root: Path) -> dict[str, int]:
    """Every file under root with its size and mtime: to prove nothing was touched."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@dataclass
class CliRun:
    code: int
    output: str
    summary: dict | None

    def states(self) -> dict[str, str]:
        assert self.summary is not None, self.output[-3000:]
        return {name: s["state"] for name, s in self.summary["stages"].items()}

    def computed(self) -> set[str]:
        return {name for name, state in self.states().items() if state == "computed"}


def run_cli(args: list[str], tmp: Path, project: Path = REPO, extra_env: dict | None = None, timeout: int = 600,
            workload: str = "emotion") -> CliRun:
    """`python flows/<workload>.py ARGS` as a user runs it, with its own Prefect home."""
    home = tmp / f"prefect-home-{os.urandom(4).hex()}"
    summary = tmp / f"summary-{os.urandom(4).hex()}.json"
    env = {**os.environ, **OFFLINE, "PREFECT_HOME": str(home), "PYTHONPATH": str(project), **(extra_env or {})}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(
        [sys.executable, f"flows/{workload}.py", *args, "--summary", str(summary)],
        cwd=project, env=env, capture_output=True, text=True, timeout=timeout,
    )
    data = json.loads(summary.read_text()) if summary.exists() else None
    return CliRun(proc.returncode, proc.stdout + proc.stderr, data)


def copy_project(target: Path) -> Path:
    for package in ("artifacts", "tasks", "flows"):
        shutil.copytree(REPO / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture(scope="session")
def cold(tmp_path_factory, emotion_dir):
    """One cold smoke run on real emotion data; tests copy its store before changing it."""
    tmp = tmp_path_factory.mktemp("cold")
    args = ["--smoke", "--data", str(emotion_dir)]
    run = run_cli([*args, "--store", str(tmp / "store")], tmp)
    assert run.code == 0, run.output[-4000:]
    return tmp / "store", args, run


def store_copy(cold, tmp_path: Path) -> Path:
    """A private copy of the cold run's store, to change without disturbing other tests."""
    target = tmp_path / "store"
    shutil.copytree(cold[0], target)
    return target


def old_prefect_record(ref, **serializer_fields) -> str:
    """A cache record as Prefect 3 wrote it for a task returning an ArtifactRef (stores before the one cache)."""
    from artifacts.records import REF_CLASS, STANDARD_DECODER

    serializer = {"type": "json", "jsonlib": "json", "object_encoder": "prefect.serializers.prefect_json_object_encoder",
                  "object_decoder": STANDARD_DECODER, "dumps_kwargs": {}, "loads_kwargs": {}, **serializer_fields}
    result = json.dumps({"__class__": REF_CLASS, "data": ref.model_dump(mode="json")})
    return json.dumps({"metadata": {"storage_key": "x", "expiration": None, "serializer": serializer,
                                    "prefect_version": "3.8.8", "storage_block_id": None}, "result": result})


@pytest.fixture(scope="session")
def stack(tmp_path_factory, emotion_dir):
    """The real team stack, deployed (tests/teamstack.py); shared by the tests that need it."""
    from teamstack import run_stack

    yield from run_stack(tmp_path_factory.mktemp("stack"), emotion_dir)
