"""What a run shows: report.md and plots in the store, Prefect artifacts, progress."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from artifacts.progress import BAR_ENV, Progress, bar_wanted
from artifacts.store import ArtifactRef, ArtifactStore
from conftest import store_copy
from flows.pipeline import STEP_NAMES
from tasks.report import PLOTS


def evaluation_of(store, summary) -> dict:
    folder = ArtifactStore(store).object_path(summary["stages"]["evaluate"]["artifact"])
    return json.loads(open(f"{folder}/metrics.json").read())


def test_cold_run_report_holds_every_model_class_and_stage(cold):
    store, _, run = cold
    digest = run.summary["report"]["artifact"]
    assert ArtifactStore(store).verify(digest).ok
    assert ArtifactStore(store).resolve_alias("emotion/report").digest == digest
    folder = ArtifactStore(store).open(ArtifactRef(kind="run-report", digest=digest))
    assert f"report: {folder}/report.md" in run.output
    report = (folder / "report.md").read_text()
    evaluation = evaluation_of(store, run.summary)
    models = evaluation["models"]
    speedup = models["teacher"]["latency_p50_ms"] / models["student_int8"]["latency_p50_ms"]
    for name, m in models.items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"{m['accuracy']:.2%}" in row and f"{m['macro_f1']:.4f}" in row and f"{m['latency_p50_ms']:.2f}" in row
    assert f"| {speedup:.1f}x |" in next(line for line in report.splitlines() if line.startswith("| student_int8 |"))
    for label, counts in zip(evaluation["labels"], models["student_int8"]["confusion_matrix"]):
        assert f"| {label} | " + " | ".join(map(str, counts)) + " |" in report
        assert any(line.startswith(f"| {label} | ") and line.count("|") == len(models) + 2 for line in report.splitlines())
    for stage in STEP_NAMES:
        assert f"| {stage} | computed |" in report
    assert "10 of 10 stages computed" in report
    for plot in PLOTS:
        assert f"({plot}.png)" in report
        with Image.open(folder / f"{plot}.png") as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 200


@pytest.fixture(scope="module")
def in_process_runs(cold, tmp_path_factory):
    """Two flow runs in this process against a temporary Prefect server: the first
    retrains from the teacher on (a changed teacher seed), the second is all cached."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import distillery

    store = store_copy(cold, tmp_path_factory.mktemp("in-process"))
    data = cold[1][cold[1].index("--data") + 1]
    runs = []
    with prefect_test_harness(server_startup_timeout=120):
        for _ in range(2):
            state = distillery(data=data, smoke=True, store=str(store), overrides={"teacher": {"seed": 7}}, return_state=True)
            flow_run_id = state.state_details.flow_run_id
            with get_client(sync_client=True) as client:
                found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            runs.append((state.result(), {(a.type, a.key): a for a in found}))
    return store, runs


def test_progress_artifacts_follow_training(in_process_runs):
    _, [(summary, artifacts), _] = in_process_runs
    assert {s for s, v in summary["stages"].items() if v["state"] == "computed"} >= {"fine_tune_teacher", "distil_student"}
    for stage in ("fine-tune-teacher", "distil-student"):
        progress = artifacts[("progress", f"{stage}-progress")]
        assert float(progress.data) == 100.0


def test_cached_run_still_publishes_its_report(in_process_runs):
    store, [_, (summary, artifacts)] = in_process_runs
    assert {s["state"] for s in summary["stages"].values()} == {"cached"}
    markdown = artifacts[("markdown", "emotion-report")].data
    assert "0 of 10 stages computed" in markdown
    assert summary["report"]["location"] in markdown
    table = artifacts[("table", "emotion-models")].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["model"] for r in rows] == ["teacher", "student", "student_int8"]
    assert rows[2]["accuracy"] == round(summary["metrics"]["student_int8"]["accuracy"], 4)
    assert not [k for k in artifacts if k[0] == "progress"]  # nothing trained, nothing to show


def test_progress_bar_log_lines_and_fraction_reports():
    stream, lines, fractions = io.StringIO(), [], []
    progress = Progress(lines.append, every_seconds=3600, bar=True, stream=stream,
                        on_fraction=lambda label, f: fractions.append((label, f)), report_seconds=3600)
    for step in range(1, 51):
        progress.step("fine_tune_teacher", step, 50, loss=1.0 / step)
    bar = stream.getvalue()
    assert "fine_tune_teacher" in bar and "50/50" in bar and "100%" in bar
    # Throttled: the first step and the last, nothing in between.
    assert fractions == [("fine_tune_teacher", 0.02), ("fine_tune_teacher", 1.0)]
    assert len(lines) == 2 and lines[-1].startswith("fine_tune_teacher: 50/50 (100%) loss 0.02")
    # The first step has no pace to extrapolate from; the last has nothing left.
    assert lines[0].endswith("elapsed 0s eta unknown") and lines[-1].endswith("eta 0s")


def test_bar_only_on_a_terminal_unless_forced(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(BAR_ENV, raising=False)
    assert bar_wanted(Terminal()) and not bar_wanted(io.StringIO())
    monkeypatch.setenv(BAR_ENV, "0")
    assert not bar_wanted(Terminal())
    monkeypatch.setenv(BAR_ENV, "1")
    assert bar_wanted(io.StringIO())
