"""The production alias and its promotion log (artifacts/promotions.py), and the verbs that move it."""

from __future__ import annotations

import multiprocessing

import pytest

from conftest import tree_state
from artifacts.lineage import referenced
from artifacts.promotions import entries, production_alias, production_run, promote, rollback
from artifacts.runs import RunRecord, publish_run
from artifacts.store import ArtifactRef, ArtifactStore, StoreError
from flows import console


def a_run(store: ArtifactStore, workload: str, n: int, int8: bool = True) -> ArtifactRef:
    """A run record whose roles are small real artifacts (a run is promoted by its record alone)."""
    roles = {}
    for role in ("dataset", "student_tokens", *(("student_int8",) if int8 else ())):
        with store.new_artifact() as out:
            (out / "x.txt").write_text(f"{workload} {n} {role}")
            roles[role] = store.publish(out, "x", {"stage": role})
    ref = publish_run(store, RunRecord(workload=workload, roles=roles, created=f"2026-12-05T00:00:{n:02d}Z"))
    store.set_alias(f"{workload}/latest", ref)
    return ref


def test_promotions_and_rollbacks_replay_as_a_stack(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    runs = [a_run(store, "reviews", n) for n in range(3)]
    assert production_run(store, "reviews") is None
    for ref in runs:
        promote(store, "reviews", ref, decision={"promote": True})
    assert production_run(store, "reviews")[0] == runs[2]
    assert rollback(store, "reviews")["run"] == runs[1].digest
    assert rollback(store, "reviews")["run"] == runs[0].digest
    with pytest.raises(StoreError, match="no earlier production run"):
        rollback(store, "reviews")
    log = entries(store, "reviews")
    assert [(e["seq"], e["action"], e["run"], e["replaced"]) for e in log] == [
        (1, "promote", runs[0].digest, None), (2, "promote", runs[1].digest, runs[0].digest),
        (3, "promote", runs[2].digest, runs[1].digest), (4, "rollback", runs[1].digest, runs[2].digest),
        (5, "rollback", runs[0].digest, runs[1].digest)]
    assert store.resolve_alias(production_alias("reviews")) == runs[0]
    with pytest.raises(StoreError, match="already reviews's production run"):
        promote(store, "reviews", runs[0])


def test_every_logged_run_is_kept_by_gc(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    old, new = a_run(store, "reviews", 0), a_run(store, "reviews", 1)
    promote(store, "reviews", old)
    promote(store, "reviews", new)
    keep = referenced(store)
    assert old.digest in keep  # no alias names it any more, but a rollback returns to it
    assert all(ref.digest in keep for ref in production_run(store, "reviews")[1].roles.values())


def _promote_in_a_process(root: str, digest: str) -> None:
    promote(ArtifactStore(root), "reviews", ArtifactRef(kind="run", digest=digest), by="automatic")


def test_concurrent_promotions_never_interleave(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    runs = [a_run(store, "reviews", n) for n in range(8)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_promote_in_a_process, args=(str(store.root), ref.digest)) for ref in runs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0] * 8
    log = entries(store, "reviews")
    assert [e["seq"] for e in log] == list(range(1, 9)) and {e["run"] for e in log} == {r.digest for r in runs}
    # Each entry replaced the one before it: every promotion read the log after the last one wrote it.
    assert [e["replaced"] for e in log] == [None] + [e["run"] for e in log[:-1]]
    assert store.resolve_alias(production_alias("reviews")).digest == log[-1]["run"]


def test_promote_and_rollback_refuse_bad_input_and_change_nothing(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    mine, theirs = a_run(store, "reviews", 0), a_run(store, "tweets", 1)
    unfinished = a_run(store, "reviews", 2, int8=False)
    root = str(store.root)
    state = tree_state(tmp_path / "store")
    cases = [
        (["promote", "nobody", mine.digest], "no alias 'nobody/latest'"),
        (["promote", "reviews", theirs.digest], "is a run of workload 'tweets', not 'reviews'"),
        (["promote", "reviews", unfinished.digest], "has no INT8 model"),
        (["promote", "reviews", "feedfacecafe"], "no artifact with digest 'feedfacecafe'"),
        (["rollback", "nobody"], "no alias 'nobody/latest'"),
        (["rollback", "reviews"], "nothing was ever promoted"),
    ]
    for argv, message in cases:
        assert console.main([*argv, "--store", root]) == 2, argv
        assert message in capsys.readouterr().err, argv
        assert tree_state(tmp_path / "store") == state, argv
    assert console.main(["promote", "reviews", mine.digest[:8], "--store", root]) == 0
    assert "reviews/production -> run" in capsys.readouterr().out
    state = tree_state(tmp_path / "store")
    assert console.main(["rollback", "reviews", "--store", root]) == 2
    assert "no earlier production run" in capsys.readouterr().err and tree_state(tmp_path / "store") == state
    assert entries(store, "reviews")[0]["by"].startswith("hand:")
