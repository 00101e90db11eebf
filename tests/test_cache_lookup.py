"""artifacts/cache.py, the one cache: a stage's earlier artifact is found by the note run_stage
leaves of its key, else by an old Prefect record (read as plain JSON, then noted), else (local
stores only) by its manifest; otherwise it is made, once per key."""

import json
import threading
import uuid

import pytest

from artifacts.cache import cached_or_run, look_up
from artifacts.progress import Progress
from artifacts.stage import run_stage
from artifacts.store import ArtifactRef, ArtifactStore, StoreError
from conftest import old_prefect_record
from tasks.stages import fetch, tokenize
from tasks.data.sources import DataParams
from tasks.stages.tokenize import TokenizeParams


def quiet() -> Progress:
    return Progress(log=lambda message: None, bar=False)


def test_run_stage_notes_its_key_so_a_remote_store_finds_the_artifact(emotion_slice, monkeypatch):
    monkeypatch.setenv("DISTILLERY_LOCKS", "local")  # one process uses this remote store
    store = ArtifactStore(f"memory://cache-lookup-{uuid.uuid4().hex}")
    params = DataParams(source=str(emotion_slice))
    key = fetch.STAGE.key(params, {})
    assert look_up(store, fetch.STAGE, key, {}).ref is None
    first = cached_or_run(fetch.STAGE, params, {}, store, quiet())
    assert not first.cached and store.made_under(key) == first.ref
    again = cached_or_run(fetch.STAGE, params, {}, store, quiet())
    assert again.cached and again.origin == "note" and again.ref == first.ref
    # Remote stores are not searched manifest by manifest: without the note (or with a torn one), no hit.
    note = f"{store.path}/keys/{key}.json"
    store.fs.pipe(note, b"{torn")
    assert look_up(store, fetch.STAGE, key, {}).ref is None
    store.fs.rm(note)
    assert look_up(store, fetch.STAGE, key, {}).ref is None


def test_a_note_naming_another_stages_artifact_is_refused(tmp_path, emotion_slice):
    store = ArtifactStore(tmp_path / "store")
    dataset = run_stage(fetch.STAGE, DataParams(source=str(emotion_slice)), {}, store)
    params = TokenizeParams(tokenizer="minilm", max_length=32)
    key = tokenize.STAGE.key(params, {"dataset": dataset})
    store.note_key(key, dataset)  # intact, but a dataset, not tokens
    found = look_up(store, tokenize.STAGE, key, {"dataset": dataset})
    assert found.ref is None and "not a tokens of tokenize" in found.refused[0]
    store.note_key(key, ArtifactRef(kind="tokens", digest=dataset.digest))  # the same, its kind relabelled
    assert look_up(store, tokenize.STAGE, key, {"dataset": dataset}).ref is None
    made = cached_or_run(tokenize.STAGE, params, {"dataset": dataset}, store, quiet())
    assert not made.cached and store.made_under(key) == made.ref  # made, and the bad note replaced


def test_local_store_finds_an_unnoted_artifact_by_its_manifest_and_never_a_broken_one(tmp_path, emotion_slice):
    store = ArtifactStore(tmp_path / "store")
    params = DataParams(source=str(emotion_slice))
    key = fetch.STAGE.key(params, {})
    ref = run_stage(fetch.STAGE, params, {}, store)
    (tmp_path / "store" / "keys" / f"{key}.json").unlink()  # as made before keys were noted
    found = cached_or_run(fetch.STAGE, params, {}, store, quiet())
    assert found.cached and found.origin == "manifest" and found.ref == ref
    assert store.made_under(key) == ref  # migrated: noted on the way
    (tmp_path / "store" / "keys" / f"{key}.json").write_text("{torn")
    assert look_up(store, fetch.STAGE, key, {}).ref == ref  # a torn note is ignored; the manifest still names the key
    victim = next(p for p in (tmp_path / "store" / "objects" / ref.digest).iterdir() if p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b"x")
    assert look_up(store, fetch.STAGE, key, {}).ref is None  # neither the note nor the manifest is followed to it


def unnoted_dataset(emotion_slice):
    """A remote store holding a dataset artifact whose key note is gone: (store, params, key, ref)."""
    store = ArtifactStore(f"memory://cache-lookup-{uuid.uuid4().hex}")
    params = DataParams(source=str(emotion_slice))
    key = fetch.STAGE.key(params, {})
    ref = run_stage(fetch.STAGE, params, {}, store)
    store.forget_key(key)
    return store, params, key, ref


def test_an_old_prefect_record_is_followed_as_plain_json_and_migrated(emotion_slice):
    store, params, key, ref = unnoted_dataset(emotion_slice)
    store.fs.pipe(f"{store.records_path}/{key}", old_prefect_record(ref).encode())
    found = cached_or_run(fetch.STAGE, params, {}, store, quiet())
    assert found.cached and found.origin == "record" and store.made_under(key) == ref


def test_a_record_naming_other_code_is_refused_never_imported(emotion_slice):
    store, _, key, ref = unnoted_dataset(emotion_slice)
    for record in (old_prefect_record(ref, object_decoder="os.system"),
                   # Prefect's coerce_old_format would let top-level keys override the checked ones
                   json.dumps({**json.loads(old_prefect_record(ref)), "serializer": {"type": "pickle"}, "data": "gASV"})):
        store.fs.pipe(f"{store.records_path}/{key}", record.encode())
        found = look_up(store, fetch.STAGE, key, {})
        assert found.ref is None and "refused" in found.refused[0], found


def test_two_callers_of_one_key_compute_it_once(tmp_path, emotion_slice):
    store = ArtifactStore(tmp_path / "store")
    params = DataParams(source=str(emotion_slice))
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(cached_or_run(fetch.STAGE, params, {}, store, quiet())))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.cached for o in outcomes) == [False, True, True]
    assert len({o.ref for o in outcomes}) == 1


def test_a_worker_that_lost_its_lock_does_not_publish(tmp_path, emotion_slice):
    store = ArtifactStore(tmp_path / "store")
    params = DataParams(source=str(emotion_slice))
    with pytest.raises(StoreError, match="lost its lock.*not published"):
        run_stage(fetch.STAGE, params, {}, store, may_publish=lambda: False)
    assert list(store.digests()) == [] and store.made_under(fetch.STAGE.key(params, {})) is None
