"""The production alias and its promotion log (artifacts/promotions.py), and the verbs that move it."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from conftest import tree_state
from artifacts.lineage import referenced
from artifacts import signing
from artifacts.promotions import DamagedEntry, ProductionMoved, RolledBack, entries, production_alias, production_run, promote, rollback
from artifacts.runs import RunRecord, publish_run, read_run
from artifacts.signing import SignatureError
from artifacts.store import ArtifactRef, ArtifactStore, StoreError
from flows import console
from tasks.stages import judge


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
        promote(store, "reviews", ref, by="hand")
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
        promote(store, "reviews", runs[0], by="hand")


def test_every_logged_run_is_kept_by_gc(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    old, new = a_run(store, "reviews", 0), a_run(store, "reviews", 1)
    promote(store, "reviews", old, by="hand")
    promote(store, "reviews", new, by="hand")
    keep = referenced(store)
    assert old.digest in keep  # no alias names it any more, but a rollback returns to it
    assert all(ref.digest in keep for ref in production_run(store, "reviews")[1].roles.values())


def _promote_in_a_process(root: str, digest: str) -> None:
    # os._exit: a forked child of a test process that once ran a Prefect test harness inherits its
    # exit handlers, which end it with status 1 after the promotion succeeded (seen in CI's full run).
    try:
        promote(ArtifactStore(root), "reviews", ArtifactRef(kind="run", digest=digest), by="hand")
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


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


def test_an_automatic_promotion_judged_against_a_champion_that_moved_is_refused(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    champion, other, challenger = (a_run(store, "reviews", n) for n in range(3))
    promote(store, "reviews", champion, by="hand")
    judged = {"promote": True, "production_run": champion.digest}  # what the gate decided, against the champion
    promote(store, "reviews", other, by="hand")  # meanwhile a teammate promoted another run
    with pytest.raises(ProductionMoved, match=f"judged against {champion.digest[:12]}.*now {other.digest[:12]}"):
        promote(store, "reviews", challenger, decision=judged)
    assert production_run(store, "reviews")[0] == other and len(entries(store, "reviews")) == 2
    # Judged against no champion, while one exists: refused too.
    with pytest.raises(ProductionMoved, match="judged against no production run"):
        promote(store, "reviews", challenger, decision={"promote": True, "production_run": None})
    promote(store, "reviews", challenger, decision={"promote": True, "production_run": other.digest})
    assert production_run(store, "reviews")[0] == challenger


def test_a_damaged_log_entry_is_a_clear_error_and_verify_repair_moves_it_aside(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    runs = [a_run(store, "reviews", n) for n in range(3)]
    promote(store, "reviews", runs[0], by="hand")
    promote(store, "reviews", runs[1], by="hand")
    assert not list((tmp_path / "store" / "promotions" / "reviews").glob(".*"))  # no temporary file left by a write
    torn = tmp_path / "store" / "promotions" / "reviews" / "00000002.json"
    torn.write_text(torn.read_text()[:40])  # a writer killed mid-write, as the old in-place writes could leave it
    for verb in (lambda: promote(store, "reviews", runs[2], by="hand"), lambda: rollback(store, "reviews"),
                 lambda: entries(store, "reviews")):
        with pytest.raises(DamagedEntry, match=f"{torn}.*verify --repair"):
            verb()
    assert console.main(["verify", "--store", str(store.root)]) == 1
    assert f"BROKEN promotion log entry {torn}" in capsys.readouterr().out
    assert console.main(["verify", "--repair", "--store", str(store.root)]) == 0
    assert not torn.exists() and list((tmp_path / "store" / "promotions-damaged" / "reviews").iterdir())
    entry = promote(store, "reviews", runs[2], by="hand")
    assert entry["seq"] == 2 and [e["seq"] for e in entries(store, "reviews")] == [1, 2]


def test_a_write_in_progress_is_no_entry(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    run = a_run(store, "reviews", 0)
    promote(store, "reviews", run, by="hand")
    (tmp_path / "store" / "promotions" / "reviews" / ".00000002.abc.tmp").write_text('{"seq": 2, "act')
    assert [e["seq"] for e in entries(store, "reviews")] == [1]


def test_an_entry_is_checked_as_an_attacker_would_write_it(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    run = a_run(store, "reviews", 0)
    promote(store, "reviews", run, by="hand")
    path = tmp_path / "store" / "promotions" / "reviews" / "00000002.json"
    for forged, problem in ((["not", "an", "object"], "not a JSON object"),
                            ({"seq": 7, "action": "promote", "run": run.digest}, "seq 7 is not its file's number 2"),
                            ({"seq": 2, "action": "delete-all", "run": run.digest}, "action 'delete-all'"),
                            ({"seq": 2, "action": "promote", "run": "../../x"}, "not a sha256")):
        path.write_text(json.dumps(forged))
        with pytest.raises(DamagedEntry, match=problem):
            entries(store, "reviews")


def test_a_lock_server_failure_in_a_promotion_is_a_clear_store_error(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store")
    run = a_run(store, "reviews", 0)
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DISTILLERY_LOCKS", f"redis://127.0.0.1:{port}/0")
    with pytest.raises(StoreError, match="lock server failed.*production is unchanged"):
        promote(store, "reviews", run, by="hand")
    assert entries(store, "reviews") == []


KEY = "a-team-key-of-some-length-0123456789"


def test_with_a_team_key_forged_entries_judgements_and_records_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_SIGNING_KEY", KEY)
    store = ArtifactStore(tmp_path / "store")
    runs = [a_run(store, "reviews", n) for n in range(2)]
    promote(store, "reviews", runs[0], by="hand")
    assert production_run(store, "reviews")[0] == runs[0]  # signed on write, checked on read
    path = tmp_path / "store" / "promotions" / "reviews" / "00000001.json"
    signed = json.loads(path.read_text())
    # A promotion entry forged by someone without the key: none, or a made-up signature.
    forged = {**signed, "seq": 2, "run": runs[1].digest, "replaced": runs[0].digest}
    second = path.with_name("00000002.json")
    for signature in (None, signed["signature"], "hmac-sha256:" + "0" * 64):
        second.write_text(json.dumps({k: v for k, v in {**forged, "signature": signature}.items() if v is not None}))
        with pytest.raises(SignatureError):
            entries(store, "reviews")
    second.unlink()
    # The alias moved by hand to another run: refused too.
    (tmp_path / "store" / "aliases" / "reviews" / "production.json").write_text(json.dumps({"kind": "run", "digest": runs[1].digest}))
    with pytest.raises(SignatureError, match="alias 'reviews/production'"):
        production_run(store, "reviews")
    # A run record published without the key.
    monkeypatch.delenv("DISTILLERY_SIGNING_KEY")
    unsigned = a_run(store, "reviews", 5)
    monkeypatch.setenv("DISTILLERY_SIGNING_KEY", KEY)
    with pytest.raises(SignatureError, match=f"run record {unsigned.digest[:12]} is not signed"):
        read_run(store, unsigned)
    # A judgement forged into a judge artifact: the cached one is refused, so the gate judges again.
    folder = tmp_path / "judgement"
    folder.mkdir()
    (folder / "judgement.json").write_text(json.dumps({"rows": 10, "paired": {"p_value": 0.0}}))
    assert "is not signed" in judge._signature_problem(folder, {})
    with pytest.raises(SignatureError):
        judge.signed_judgement(folder)
    (folder / "judgement.json").write_text(json.dumps(signing.sign({"rows": 10, "paired": {"p_value": 0.0}}, "judgement")))
    assert judge._signature_problem(folder, {}) == "" and judge.signed_judgement(folder)["rows"] == 10


def test_without_a_key_nothing_is_signed_or_checked(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    run = a_run(store, "reviews", 0)
    promote(store, "reviews", run, by="hand")
    assert "signature" not in (tmp_path / "store" / "promotions" / "reviews" / "00000001.json").read_text()
    assert production_run(store, "reviews")[0] == run


def test_a_short_or_unreadable_key_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLERY_SIGNING_KEY", "short")
    with pytest.raises(StoreError, match="at least 16"):
        signing.team_key()
    monkeypatch.delenv("DISTILLERY_SIGNING_KEY")
    monkeypatch.setenv("DISTILLERY_SIGNING_KEY_FILE", str(tmp_path / "nowhere"))
    with pytest.raises(StoreError, match="cannot be read"):
        signing.team_key()


def test_a_rolled_back_model_is_never_promoted_again_automatically(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    a, b = a_run(store, "reviews", 0), a_run(store, "reviews", 1)
    promote(store, "reviews", a, decision={"production_run": None})
    promote(store, "reviews", b, decision={"production_run": a.digest})
    rollback(store, "reviews")  # b was bad: back to a
    # The next scheduled run has b's inputs: a new record around the same cached INT8 model, judged
    # against the restored champion a, and its cached judgement says "promote".
    rerun = publish_run(store, read_run(store, b).model_copy(update={"created": "2026-12-06T00:00:00Z"}))
    assert rerun.digest != b.digest
    with pytest.raises(RolledBack, match="rolled back out of reviews's production.*log entry 3"):
        promote(store, "reviews", rerun, decision={"production_run": a.digest})
    assert production_run(store, "reviews")[0] == a
    assert [e["action"] for e in entries(store, "reviews")] == ["promote", "promote", "rollback"]
    # By hand it may come back, and that is logged.
    assert promote(store, "reviews", rerun, by="hand")["by"].startswith("hand:")
    assert production_run(store, "reviews")[0] == rerun
    # Another model is not affected.
    c = a_run(store, "reviews", 2)
    promote(store, "reviews", c, decision={"production_run": rerun.digest})
    assert production_run(store, "reviews")[0] == c
