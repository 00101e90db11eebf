"""Stage tasks retry transient failures only (flows/pipeline.py), and the flow's events (flows/events.py)."""

from __future__ import annotations

import pytest
from prefect import flow

from artifacts.store import ArtifactStore, StoreError
from flows import pipeline
from tasks.errors import DistilleryError
from tasks.stages import fetch


def test_what_counts_as_transient():
    import redis

    for exc in (OSError("connection reset"), ConnectionError(), TimeoutError(), redis.exceptions.ConnectionError()):
        assert pipeline.is_transient(exc), exc
    for exc in (DistilleryError("bad input"), StoreError("fails its checksum"), ValueError(), None):
        assert not pipeline.is_transient(exc), exc


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.parametrize("failure, tries, state", [(OSError("S3: connection reset by peer"), 2, "Completed"),
                                                    (DistilleryError("the data is bad"), 1, "Failed")])
def test_a_transient_store_error_is_retried_and_bad_input_is_not(harness, tmp_path, emotion_slice, monkeypatch,
                                                                   failure, tries, state):
    monkeypatch.setattr(pipeline, "RETRY_DELAYS", [0, 0])
    store = ArtifactStore(tmp_path / "store")
    publish, calls = ArtifactStore.publish, []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise failure
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(ArtifactStore, "publish", flaky)

    @flow
    def one_stage() -> str:
        return pipeline.stage_task("fetch_dataset", fetch.STAGE, store)(
            fetch.DataParams(source=str(emotion_slice)), {}, return_state=True).name  # the task's final state

    assert one_stage() == state and len(calls) == tries
    assert (store.digests() != []) == (state == "Completed")
