"""What a run shows: report.md and plots in the store, Prefect artifacts, progress."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from artifacts.progress import BAR_ENV, Progress, bar_wanted
from artifacts.store import ArtifactRef, ArtifactStore
from conftest import EMOTION_LABELS, store_copy
from flows.pipeline import STEP_NAMES
from flows.publish import embed_images
from tasks.stages import report as report_stage
from tasks.report.markdown import SMOKE_NOTE, markdown_report, report_title
from tasks.report.plots import accuracy_latency_figure, log_ticks
from tasks.report.rows import MODEL_COLUMNS, model_rows, readable_model_rows
from tasks.stages.report import PLOTS, ReportParams


def evaluation_of(store, summary) -> dict:
    folder = ArtifactStore(store).object_path(summary["stages"]["evaluate"]["artifact"])
    return json.loads(open(f"{folder}/metrics.json").read())


def test_cold_run_report_holds_every_model_class_and_stage(cold):
    store, _, run = cold
    digest = run.summary["report"]["artifact"]
    assert ArtifactStore(store).verify(digest).ok
    assert ArtifactStore(store).resolve_alias("emotion-smoke/report").digest == digest
    folder = ArtifactStore(store).open(ArtifactRef(kind="run-report", digest=digest))
    assert f"report: {folder}/report.md" in run.output
    report = (folder / "report.md").read_text()
    assert report.startswith(f"# distillery report: emotion-smoke ({SMOKE_NOTE})\n")
    evaluation = evaluation_of(store, run.summary)
    models = evaluation["models"]
    speedup = models["teacher"]["latency_p50_ms"] / models["student_int8"]["latency_p50_ms"]
    for name, m in models.items():
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
        assert f"{m['accuracy']:.2%}" in row and f"{m['macro_f1']:.4f}" in row and f"{m['latency_p50_ms']:.2f}" in row
    ratio = f"{speedup:.0f}x" if speedup >= 100 else f"{speedup:.1f}x"
    assert f"| {ratio} |" in next(line for line in report.splitlines() if line.startswith("| student_int8 |"))
    for label, counts in zip(evaluation["labels"], models["student_int8"]["confusion_matrix"]):
        assert f"| {label} | " + " | ".join(map(str, counts)) + " |" in report
        assert any(line.startswith(f"| {label} | ") and line.count("|") == len(models) + 2 for line in report.splitlines())
    assert list(run.summary["stages"]) == [n for n in STEP_NAMES if n not in ("compare_data", "judge")]  # no production yet
    for stage in run.summary["stages"]:
        assert f"| {stage} | computed |" in report
    assert "11 of 11 stages computed" in report
    # the first run of a name passes its (smoke: zero) floors and is promoted; the report says so and on what
    assert "## Promoted to production" in report and "no model was in production, so the floors alone decide" in report
    # the INT8 student against its teacher on validation, in the report, the summary and the printed table
    gap = evaluation["shortfall"]
    assert gap["split"] == "validation" and run.summary["shortfall"]["flagged"] == gap["flagged"]
    assert f"accuracy {gap['student_int8']['accuracy']:.2%} against the teacher's {gap['teacher']['accuracy']:.2%}" in report
    assert ("## WARNING: the INT8 student falls short of its teacher" in report) == gap["flagged"]
    assert f"worst class {gap['worst_class']['label']!r}" in run.output
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
    report = artifacts[("markdown", "emotion-smoke-report")]
    markdown = report.data
    assert "0 of 11 stages computed" in markdown
    assert "## NOT promoted: production is unchanged" in markdown and "already in production" in markdown
    assert summary["report"]["location"] in markdown
    # A smoke run says so where the UI shows it: the report's title and both descriptions.
    assert markdown.startswith(f"# {report_title('emotion-smoke', smoke=True)}\n")
    table = artifacts[("table", "emotion-smoke-models")]
    assert SMOKE_NOTE in report.description and SMOKE_NOTE in table.description
    # The plots travel inside the markdown, byte for byte the PNGs in the store.
    folder = ArtifactStore(store).object_path(summary["report"]["artifact"])
    inlined = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert sorted(base64.b64decode(data) for data in inlined) == sorted(
        open(f"{folder}/{plot}.png", "rb").read() for plot in PLOTS)
    assert not re.search(r"\]\((?!data:)[^)]*\.png\)", markdown)  # no link the UI cannot follow
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["model"] for r in rows] == ["teacher", "student", "student_int8"]
    assert list(rows[0]) == list(MODEL_COLUMNS)
    int8 = summary["metrics"]["student_int8"]
    assert rows[2]["accuracy"] == f"{int8['accuracy']:.2%}"
    assert rows[2]["p50 latency"] == f"{int8['latency_p50_ms']:.2f} ms"
    assert rows[2]["size"] == f"{int8['size_bytes'] / 1e6:.1f} MB"
    assert not [k for k in artifacts if k[0] == "progress"]  # nothing trained, nothing to show


def test_progress_bar_log_lines_and_fraction_reports():
    stream, lines, fractions = io.StringIO(), [], []
    progress = Progress(lines.append, every_seconds=3600, bar=True, stream=stream,
                        on_fraction=lambda label, f: fractions.append((label, f)), report_seconds=3600)
    for step in range(1, 51):
        progress.step("fine_tune_teacher", step, 50, loss=1.0 / step)
    bar = stream.getvalue()
    assert "fine_tune_teacher" in bar and "50/50" in bar and "100%" in bar
    # Throttled: the first step and the last, nothing in between but the first estimate of the time left
    # (after 20 steps, artifacts/progress.py; tests/test_progress.py checks its wording).
    assert fractions == [("fine_tune_teacher", 0.02), ("fine_tune_teacher", 1.0)]
    assert len(lines) == 3 and lines[-1].startswith("fine_tune_teacher: 50/50 (100%) loss 0.02")
    assert "left" in lines[1] and "a step, this machine" in lines[1]
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


def evaluation_like(models: dict[str, tuple[float, float, float]]) -> dict:
    """metrics.json as the evaluate stage writes it: name -> (accuracy, p50 ms, MB)."""
    return {"labels": EMOTION_LABELS, "test_rows": 2000, "threads": 2, "models": {
        name: {"accuracy": accuracy, "macro_f1": accuracy - 0.04, "latency_p50_ms": p50, "latency_p95_ms": 1.5 * p50,
               "size_bytes": round(mb * 1e6), "per_class_f1": [accuracy - 0.02 * i for i in range(6)],
               "confusion_matrix": [[90 if i == j else 2 for j in range(6)] for i in range(6)]}
        for name, (accuracy, p50, mb) in models.items()}}


# The full run's figures (README) and a smoke run's: tiny models, sub-millisecond INT8.
FULL_RUN = evaluation_like({"teacher": (0.924, 10.47, 90.9), "student": (0.9265, 5.19, 69.6), "student_int8": (0.9275, 0.73, 18.0)})
SMOKE_RUN = evaluation_like({"teacher": (0.34, 64.4, 2.3), "student": (0.3133, 0.82, 8.1), "student_int8": (0.3267, 0.07, 2.1)})


def test_models_table_reads_the_same_in_the_report_and_the_ui():
    rows = readable_model_rows(model_rows(SMOKE_RUN))
    assert list(rows[0]) == ["model", "accuracy", "macro-F1", "p50 latency", "p95 latency", "size",
                             "faster than teacher", "smaller than teacher"]
    # 64.4 / 0.07 = 920.0: past 100x a decimal is noise.
    assert rows[2] == {"model": "student_int8", "accuracy": "32.67%", "macro-F1": "0.2867", "p50 latency": "0.07 ms",
                       "p95 latency": "0.11 ms", "size": "2.1 MB", "faster than teacher": "920x",
                       "smaller than teacher": "1.1x"}
    assert rows[1]["faster than teacher"] == "78.5x" and rows[1]["smaller than teacher"] == "0.3x"
    table = [line for line in markdown_report("emotion", False, {}, SMOKE_RUN).splitlines() if line.startswith("| student_int8 |")][0]
    assert table == "| " + " | ".join(rows[2].values()) + " |"
    with pytest.raises(ValueError, match=r"'student' lacks \['speedup'\]"):
        readable_model_rows([{k: v for k, v in model_rows(SMOKE_RUN)[1].items() if k != "speedup"}])


def test_report_title_marks_smoke_runs_only():
    smoke = markdown_report("sst2", True, {}, FULL_RUN)
    real = markdown_report("sst2", False, {}, FULL_RUN)
    assert smoke.splitlines()[0] == "# distillery report: sst2 (smoke run: tiny models on a data slice, accuracy means nothing)"
    assert real.splitlines()[0] == "# distillery report: sst2" and "smoke" not in real


def built_report(tmp_path, evaluation: dict) -> tuple:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "metrics.json").write_text(json.dumps(evaluation))
    out = tmp_path / "out"
    out.mkdir()
    params = ReportParams(workload="emotion", smoke=True, stages={
        "fetch_dataset": {"state": "computed", "stage": "fetch", "seconds": 0.4, "artifact": "ab" * 32}})
    report_stage.build_report(params, {"evaluation": tmp_path / "in"}, out, Progress(lambda _: None))
    return out, (out / "report.md").read_text()


def test_plots_are_embedded_as_data_uris_and_stay_compact(tmp_path):
    folder, markdown = built_report(tmp_path, FULL_RUN)
    body = embed_images(markdown, folder)
    images = re.findall(r"^!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)$", body, flags=re.M)
    assert [alt for alt, _ in images] == ["accuracy vs latency and size", "per-class F1", "confusion matrix", "stage times"]
    assert [base64.b64decode(data) for _, data in images] == [
        (folder / f"{name}.png").read_bytes() for name in ("accuracy_latency", "per_class_f1", "confusion_matrix", "stage_times")]
    for _, data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG" and image.width >= 600
    assert 20_000 < len(body.encode()) < 140_000, len(body.encode())  # four real plots, yet one compact artifact
    # Everything else is report.md unchanged, so the store's copy keeps its relative links.
    assert [line for line in body.splitlines() if not line.startswith("![")] == [
        line for line in markdown.splitlines() if not line.startswith("![")]
    assert "](accuracy_latency.png)" in (folder / "report.md").read_text()
    (folder / "stage_times.png").unlink()
    with pytest.raises(FileNotFoundError, match="stage_times.png"):
        embed_images(markdown, folder)
    with pytest.raises(FileNotFoundError, match="not a file in the report folder"):
        embed_images("![escape](../in/secret.png)\n", folder)


def visible_ticks(axis, low: float, high: float) -> list[tuple[float, str]]:
    return [(v, label.get_text()) for v, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
            if low <= v <= high]


@pytest.mark.parametrize("evaluation", [FULL_RUN, SMOKE_RUN], ids=["full-run", "smoke-run"])
def test_accuracy_latency_axes_carry_round_tick_labels_around_the_data(evaluation):
    plt, fig = accuracy_latency_figure(evaluation)
    try:
        fig.canvas.draw()
        latency_axes, size_axes = fig.axes
        rows = model_rows(evaluation)
        for ax, key in ((latency_axes, "latency_p50_ms"), (size_axes, "size_mb")):
            values = [r[key] for r in rows]
            low, high = ax.get_xlim()
            assert low < min(values) and max(values) < high  # every point inside the frame
            ticks = visible_ticks(ax.xaxis, low, high)
            numbers = [v for v, _ in ticks]
            assert 3 <= len(ticks) <= 10, ticks
            assert all(text == f"{v:g}" for v, text in ticks), ticks  # "0.5", "20", never "$10^{1}$" or ""
            assert numbers[0] <= min(values) and numbers[-1] >= max(values), (key, ticks, values)
            # Round values: one significant figure from 1-2-5 (or 1.5, 3, 7 on narrow ranges).
            assert all(re.fullmatch(r"0\.0*[1-9]5?|[1-9]\.?5?0*", text) for _, text in ticks), ticks
    finally:
        plt.close(fig)
    if evaluation is FULL_RUN:
        assert [t for _, t in visible_ticks(latency_axes.xaxis, *latency_axes.get_xlim())] == ["0.5", "1", "2", "5", "10", "20"]
        assert [t for _, t in visible_ticks(size_axes.xaxis, *size_axes.get_xlim())] == ["10", "20", "50", "100"]


def test_log_ticks_bracket_any_range_and_refuse_what_a_log_axis_cannot_show():
    assert log_ticks(0.73, 10.47) == [0.5, 1, 2, 5, 10, 20]
    assert log_ticks(17.5, 23.4) == [15, 20, 30]  # narrow: finer steps than 1-2-5
    assert log_ticks(0.01, 5000) == [0.01, 0.1, 1, 10, 100, 1000, 10000]  # wide: decades
    assert len(log_ticks(3.0, 3.0)) >= 3
    for low, high in ((0.02, 0.5), (1e-3, 2e-3), (40, 41), (1, 1e6), (123.4, 5678.9)):
        ticks = log_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high and 2 <= len(ticks) <= 10 and ticks == sorted(set(ticks)), (low, high, ticks)
        assert np.all(np.diff(np.log10(ticks)) > 0)
    for low, high in ((0, 1), (-1, 2), (2, 1), (1, float("inf")), (float("nan"), 1)):
        with pytest.raises(ValueError, match="log axis needs"):
            log_ticks(low, high)


def test_shortfall_names_the_accuracy_gap_and_each_class_that_collapses():
    from tasks.measure.metrics import classification_report, shortfall

    labels = np.array([0] * 50 + [1] * 45 + [2] * 5)
    teacher = classification_report(labels, labels, 3)  # perfect
    student_predicted = labels.copy()
    student_predicted[95:] = 0  # never predicts the rare class
    student = classification_report(student_predicted, labels, 3)
    gap = shortfall(teacher, student, ["a", "b", "rare"], accuracy_points=1.0, class_f1=0.10)
    assert gap["accuracy_gap_points"] == pytest.approx(5.0) and gap["flagged"]
    assert gap["worst_class"] == {"label": "rare", "teacher_f1": 1.0, "student_f1": 0.0, "gap": 1.0}
    assert gap["reasons"] == ["accuracy 5.00 points below the teacher (limit 1)",
                              "class 'rare' F1 0.000 against the teacher's 1.000 (more than 0.1 below)"]
    close = student_predicted.copy()
    close[95:99] = 2  # four of five rare rows back: 1 point, F1 0.889 for the rare class
    gap = shortfall(teacher, classification_report(close, labels, 3), ["a", "b", "rare"], 1.0, 0.12)
    assert not gap["flagged"] and gap["reasons"] == []


def test_report_warns_loudly_only_when_the_student_falls_short():
    from tasks.measure.metrics import classification_report, shortfall

    labels = np.array([0, 0, 1, 1, 2])
    base = {k: v for k, v in SMOKE_RUN.items()}
    for predicted, flagged in ((labels, False), (np.array([0, 0, 1, 1, 0]), True)):
        teacher, student = classification_report(labels, labels, 3), classification_report(predicted, labels, 3)
        evaluation = {**base, "shortfall": {"split": "validation", "rows": 5, "teacher": teacher, "student_int8": student,
                                            **shortfall(teacher, student, ["a", "b", "x|y"], 1.0, 0.1)}}
        report = markdown_report("emotion", False, {}, evaluation)
        assert ("## WARNING: the INT8 student falls short of its teacher" in report) == flagged
        assert "x\\|y" in report or not flagged  # a pipe in a label does not break the line


# Label names come from the data: pipes, line breaks and dollar signs are all legal there.
AWKWARD_LABELS = ["x|y", "two\nlines", "costs $5", "cost $_$", "plain", "a | b | c"]


def test_awkward_label_names_keep_the_tables_whole_and_the_plots_drawable(tmp_path):
    folder, markdown = built_report(tmp_path, {**FULL_RUN, "labels": AWKWARD_LABELS})
    lines = markdown.splitlines()
    models = len(FULL_RUN["models"])
    per_class = lines[lines.index("## Per-class F1") + 4:][:len(AWKWARD_LABELS)]
    confusion_header = next(line for line in lines if line.startswith("| true \\ predicted |"))
    confusion = lines[lines.index(confusion_header) + 2:][:len(AWKWARD_LABELS)]
    unescaped_pipes = lambda line: len(re.findall(r"(?<!\\)\|", line))  # noqa: E731
    assert [unescaped_pipes(line) for line in per_class] == [models + 2] * len(AWKWARD_LABELS)
    assert [unescaped_pipes(line) for line in confusion] == [len(AWKWARD_LABELS) + 2] * len(AWKWARD_LABELS)
    assert unescaped_pipes(confusion_header) == len(AWKWARD_LABELS) + 2
    assert per_class[1].startswith("| two lines |")  # one row per class: the line break is gone
    for plot in ("per_class_f1", "confusion_matrix"):  # drawn ("$_$" read as mathtext fails the figure), not empty
        assert (folder / f"{plot}.png").stat().st_size > 1000
