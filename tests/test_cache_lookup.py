"""artifacts/cache.py: a stage's earlier artifact is found by its Prefect record, else by the
note run_stage leaves of its key, else (local stores only) by its manifest."""

import uuid

from artifacts.cache import cached, published
from artifacts.stage import run_stage
from artifacts.store import ArtifactRef, ArtifactStore
from tasks import fetch, tokenize
from tasks.tokenize import TokenizeParams
from tasks.sources import DataParams


def test_run_stage_notes_its_key_so_a_remote_store_finds_the_artifact_without_a_record(emotion_slice):
    store = ArtifactStore(f"memory://cache-lookup-{uuid.uuid4().hex}")
    params = DataParams(source=str(emotion_slice))
    key = fetch.STAGE.key(params, {})
    assert cached(store, fetch.STAGE, key, {}) is None
    ref = run_stage(fetch.STAGE, params, {}, store)
    assert store.made_under(key) == ref
    assert cached(store, fetch.STAGE, key, {}) == ref  # no record was ever written
    # Remote stores are not searched manifest by manifest: without the note (or with a torn one), no hit.
    note = f"{store.path}/keys/{key}.json"
    store.fs.pipe(note, b"{torn")
    assert published(store, fetch.STAGE, key, {}) is None
    store.fs.rm(note)
    assert published(store, fetch.STAGE, key, {}) is None


def test_a_note_naming_another_stages_artifact_is_refused(tmp_path, emotion_slice):
    store = ArtifactStore(tmp_path / "store")
    dataset = run_stage(fetch.STAGE, DataParams(source=str(emotion_slice)), {}, store)
    params = TokenizeParams(tokenizer="minilm", max_length=32)
    key = tokenize.STAGE.key(params, {"dataset": dataset})
    store.note_key(key, dataset)  # intact, but a dataset, not tokens
    assert "not a tokens of tokenize" in tokenize.STAGE.problem_with(store, dataset, {"dataset": dataset})
    assert published(store, tokenize.STAGE, key, {"dataset": dataset}) is None
    store.note_key(key, ArtifactRef(kind="tokens", digest=dataset.digest))  # the same, its kind relabelled
    assert published(store, tokenize.STAGE, key, {"dataset": dataset}) is None


def test_local_store_finds_an_unnoted_artifact_by_its_manifest_and_never_a_broken_one(tmp_path, emotion_slice):
    store = ArtifactStore(tmp_path / "store")
    params = DataParams(source=str(emotion_slice))
    key = fetch.STAGE.key(params, {})
    ref = run_stage(fetch.STAGE, params, {}, store)
    (tmp_path / "store" / "keys" / f"{key}.json").unlink()  # as made before keys were noted
    assert published(store, fetch.STAGE, key, {}) == ref
    run_stage(fetch.STAGE, params, {}, store)  # notes the key again
    (tmp_path / "store" / "keys" / f"{key}.json").write_text("{torn")
    assert published(store, fetch.STAGE, key, {}) == ref  # a torn note is ignored; the manifest still names the key
    run_stage(fetch.STAGE, params, {}, store)  # notes the key again
    victim = next(p for p in (tmp_path / "store" / "objects" / ref.digest).iterdir() if p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b"x")
    assert published(store, fetch.STAGE, key, {}) is None  # neither the note nor the manifest is followed to it
