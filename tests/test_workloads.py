"""Named workloads: a data set of one's own under a name of its own, through `distillery run`.

One store holds two named runs of a CSV data set made from real emotion rows under other
column names (`body`, `mood`): `reviews` (cold) and `reviews-b` (the same inputs, so every
stage is cached). Both run in this process against one temporary Prefect server, whose API
the flow runs' names and tags are read back from.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from artifacts.runs import latest_run
from artifacts.store import ArtifactStore
from conftest import EMOTION_LABELS, REPO, tree_state
from flows import console
from flows.cli import parse_request
from flows.pipeline import STEP_NAMES
from tasks.data.sources import DataParams, load_splits

NAMES = ("reviews", "reviews-b")
# Smoke-sized, and smaller still: one epoch each on 240 rows keeps the cold run short.
RUN_FLAGS = ["--smoke", "--data-text-column", "body", "--data-label-column", "mood", "--data-max-train-rows", "240",
             "--data-max-eval-rows", "60", "--teacher-epochs", "1", "--student-epochs", "1"]


def write_reviews(emotion_dir: Path, target: Path, rows: dict[str, int], relabel=lambda label: label) -> Path:
    """The first rows of the real emotion files as CSV with columns id, body, mood (val becomes validation)."""
    target.mkdir(parents=True, exist_ok=True)
    for split, count in rows.items():
        lines = (emotion_dir / f"{split}.txt").read_text().splitlines()[1 : count + 1]
        with open(target / f"{'validation' if split == 'val' else split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "body", "mood"])
            for number, line in enumerate(lines):
                text, label = line.rsplit(";", 1)
                writer.writerow([number, text, relabel(label)])
    return target


def aliases(store: Path) -> dict[str, str]:
    artifacts = ArtifactStore(store)
    return {name: artifacts.resolve_alias(name).digest for name in artifacts.aliases()}


@pytest.fixture(scope="module")
def named(tmp_path_factory, emotion_dir):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.testing.utilities import prefect_test_harness

    tmp = tmp_path_factory.mktemp("named")
    data = write_reviews(emotion_dir, tmp / "reviews", {"train": 400, "val": 80, "test": 80})
    store = tmp / "store"
    summaries, after, flow_runs, prefect_artifacts = {}, {}, {}, {}
    with prefect_test_harness(server_startup_timeout=120):
        for name in NAMES:
            out = tmp / f"{name}.json"
            code = console.main(["run", "--name", name, "--data", str(data), "--store", str(store), "--summary", str(out),
                                 *RUN_FLAGS])
            assert code == 0, f"distillery run --name {name} failed"
            summaries[name] = json.loads(out.read_text())
            print(name, {step: s["seconds"] for step, s in summaries[name]["stages"].items()})
            after[name] = aliases(store)
        with get_client(sync_client=True) as client:
            for name, summary in summaries.items():
                run_id = UUID(summary["flow_run"]["id"])
                flow_runs[name] = client.read_flow_run(run_id)
                found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
                prefect_artifacts[name] = {a.key for a in found if a.key}
    return {"store": store, "data": data, "summaries": summaries, "aliases": after, "flow_runs": flow_runs,
            "prefect_artifacts": prefect_artifacts}


def test_a_run_under_a_name_never_moves_another_names_aliases(named):
    first, second = (named["summaries"][n] for n in NAMES)
    # Each name's first run passes its (smoke: zero) floors and becomes that name's production run.
    # Smoke runs go by <name>-smoke: their aliases are that name's, never <name>/latest or <name>/production.
    assert named["aliases"]["reviews"] == {"reviews-smoke/latest": first["run"], "reviews-smoke/production": first["run"],
                                           "reviews-smoke/report": first["report"]["artifact"]}
    assert named["aliases"]["reviews-b"] == {**named["aliases"]["reviews"], "reviews-b-smoke/latest": second["run"],
                                             "reviews-b-smoke/production": second["run"],
                                             "reviews-b-smoke/report": second["report"]["artifact"]}
    assert second["run"] != first["run"] and second["report"]["artifact"] != first["report"]["artifact"]
    store = ArtifactStore(named["store"])
    assert latest_run(store, "reviews-smoke").workload == "reviews-smoke"
    assert latest_run(store, "reviews-b-smoke").workload == "reviews-b-smoke"


def test_the_second_name_reuses_every_stage_of_the_first(named):
    first, second = (named["summaries"][n] for n in NAMES)
    assert list(first["stages"]) == [s for s in STEP_NAMES if s not in ("compare_data", "judge")]  # no production yet
    assert {s["state"] for s in first["stages"].values()} == {"computed"}
    assert {s["state"] for s in second["stages"].values()} == {"cached"}  # the cache is shared, the names are not
    assert {k: s["artifact"] for k, s in second["stages"].items()} == {k: s["artifact"] for k, s in first["stages"].items()}


def test_report_title_and_the_label_set_read_off_the_training_split(named):
    inferred = sorted(EMOTION_LABELS)  # the rows' label names, sorted: not the dair-ai id order
    store = ArtifactStore(named["store"])
    for name in NAMES:
        summary = named["summaries"][name]
        assert summary["workload"] == f"{name}-smoke" and summary["preset"] == "generic" and summary["labels"] == inferred
        report = (store.open(store.resolve_alias(f"{name}-smoke/report")) / "report.md").read_text()
        assert report.startswith(f"# distillery report: {name}-smoke (smoke run")
        assert [line.split(" | ")[0].lstrip("| ") for line in report.splitlines()
                if line.split(" | ")[0].lstrip("| ") in inferred][:6] == inferred  # per-class rows, in label order
    record = latest_run(store, "reviews-smoke")
    assert record.labels == inferred  # what the INT8 model's outputs mean, in the record readers use
    assert store.manifest(record.role("dataset"))["metrics"]["labels"] == inferred


def test_predict_by_workload_name(named, capsys):
    assert console.main(["predict", "--store", str(named["store"]), "--name", "reviews-b-smoke", "i feel wonderful"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == "i feel wonderful" and list(result["scores"]) == sorted(EMOTION_LABELS)


def test_flow_run_name_and_tags_as_the_prefect_api_has_them(named):
    for name in NAMES:
        flow_run = named["flow_runs"][name]
        assert re.fullmatch(rf"{name}-smoke-\d{{8}}-\d{{6}}", flow_run.name), flow_run.name
        assert {f"workload:{name}-smoke", "preset:generic", "smoke"} <= set(flow_run.tags)
        assert named["summaries"][name]["flow_run"]["name"] == flow_run.name
        assert {f"{name}-smoke-report", f"{name}-smoke-models"} <= named["prefect_artifacts"][name]
    assert not {"reviews-smoke-report", "reviews-report", "emotion-report"} & named["prefect_artifacts"]["reviews-b"]


def test_presets_are_workloads_of_the_same_command():
    request, _ = parse_request(["--preset", "emotion", "--smoke", "--data", "../shared/data/emotion"])
    # default name: the preset's, and a smoke run's is that with -smoke, so it never moves emotion/latest
    assert (request.preset, request.config().name) == ("emotion", "emotion-smoke")
    assert request.config().data.label_names == EMOTION_LABELS
    # The preset's Hub source, pinned (offline an unpinned one is refused: tests/test_data.py)
    request, _ = parse_request(["--preset", "sst2", "--name", "sst2-nightly-check", "--data-revision", "0123abcd"])
    assert request.config().name == "sst2-nightly-check" and request.config().data.source == "stanfordnlp/sst2"
    request, _ = parse_request(["--name", "reviews", "--data", "./my-data"])
    config = request.config()
    assert request.preset == "generic" and config.data.label_names is None and config.data.source == "./my-data"
    from flows.presets import build_config, emotion

    preset = build_config(emotion(), "./my-data")  # hardware resolved, as the run's configuration is
    assert config.teacher == preset.teacher  # the emotion preset's models and schedule ...
    assert config.student == preset.student.model_copy(update={"class_balance": 0.5})  # ... and class-balanced rows


def test_the_deployments_pass_parameters_the_flow_accepts():
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import distillery

    schema = parameter_schema(distillery.fn).model_dump()
    properties = schema["properties"]
    assert {"workload", "name", "data", "smoke", "overrides", "store"} <= set(properties)
    deployments = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
    assert any(d["parameters"] == {"workload": "generic"} for d in deployments)
    presets = json.dumps(schema)
    for deployment in deployments:
        assert set(deployment["parameters"]) <= set(properties), deployment["name"]
        assert f'"{deployment["parameters"]["workload"]}"' in presets  # a preset the flow's schema lists


def test_numeric_labels_are_names_in_numeric_order_whatever_the_file_format(tmp_path):
    import pandas as pd

    for fmt in ("csv", "parquet"):
        folder = tmp_path / fmt
        folder.mkdir()
        for split in ("train", "test"):
            frame = pd.DataFrame({"text": [f"{split} {i}" for i in range(30)], "stars": [1 + i % 10 for i in range(30)]})
            if fmt == "csv":
                frame.to_csv(folder / f"{split}.csv", index=False)
            else:
                frame.to_parquet(folder / f"{split}.parquet")
        splits, names = load_splits(DataParams(source=str(folder), label_column="stars"))
        assert names == [str(n) for n in range(1, 11)]  # 10 after 9, and no empty class "0"
        assert splits["test"]["label"].tolist()[:10] == list(range(10))


# -- bad input: refused before any work, the fix named, exit status 2, the store untouched ---------
def _relabelled(relabel):
    return lambda emotion_dir, folder: write_reviews(emotion_dir, folder, {"train": 120, "test": 30}, relabel)


def _with_one_row_labelled(label):
    def make(emotion_dir, folder):
        write_reviews(emotion_dir, folder, {"train": 120, "test": 30})
        with open(folder / "train.csv", "a", newline="") as handle:
            csv.writer(handle).writerow([999, "what a twist that was", label])
        return folder

    return make


BAD = {
    # case: (data folder maker or None for the good data, flags, words of the problem, words of the fix)
    "name is no alias": (None, ["--name", "My Reviews"], "invalid workload name 'My Reviews'", "--name my-reviews"),
    "name with a slash": (None, ["--name", "reviews/latest"], "invalid workload name", "--name reviews-latest"),
    # Prefect artifact keys take no '_': my_reviews would share my-reviews' report artifact.
    "name with an underscore": (None, ["--name", "my_reviews"], "invalid workload name 'my_reviews'", "--name my-reviews"),
    "name of another preset": (None, ["--name", "emotion"], "is the emotion preset's", "--preset emotion"),
    "preset name on another preset": (None, ["--preset", "sst2", "--name", "emotion"], "would move emotion/latest",
                                      "Pick a name of its own"),
    "generic without a name": (None, [], "needs a workload name", "--name NAME"),
    "a smoke run's name for a full run": (None, ["--name", "reviews-smoke"], "ends in '-smoke', which names smoke runs",
                                          "run with --smoke"),
    "one class": (_relabelled(lambda label: "joy"), ["--name", "reviews"], "hold only 'joy'", "at least two classes"),
    "a class with one training row": (_with_one_row_labelled("suprise"), ["--name", "reviews"],
                                      "fewer than 2 training rows: 'suprise' (1 row)",
                                      "fix the label if it is a typo"),
    "numeric labels with a gap": (_relabelled(lambda label: {"sadness": "0", "joy": "1"}.get(label, "3")),
                                  ["--name", "reviews"], "look like class ids (0, 1, 3) but 2 is missing",
                                  "--data-label-names"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_before_any_work(named, tmp_path, emotion_dir, capsys, case):
    make, flags, problem, fix = BAD[case]
    data = make(emotion_dir, tmp_path / "data") if make else named["data"]
    before = tree_state(named["store"])
    started = time.monotonic()
    code = console.main(["run", "--data", str(data), "--store", str(named["store"]), *RUN_FLAGS, *flags])
    message = capsys.readouterr().err
    assert code == 2, message
    assert problem in message and fix in message, message
    assert time.monotonic() - started < 60  # no training: refused in preflight at the latest
    assert tree_state(named["store"]) == before


def test_generic_without_data_names_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILLERY_DATA", raising=False)
    assert console.main(["run", "--name", "reviews", "--store", str(tmp_path / "store")]) == 2
    assert "has no data source: pass --data PATH" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
