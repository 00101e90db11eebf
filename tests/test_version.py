"""Which code a run ran, and the refusal of a worker at other code than its deployment's (flows/version.py)."""

from __future__ import annotations

import subprocess

import pytest

from flows.version import check_pin, code_tag, code_version, describe, refuse_other_code
from tasks.errors import DistilleryError


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_the_commit_and_edited_tracked_files_are_recorded(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "stage.py").write_text("x = 1\n")
    git(repo, "add", "stage.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    clean = code_version(repo)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (repo / "notes.txt").write_text("untracked files are not code that runs")
    assert code_version(repo)["dirty"] is False
    (repo / "stage.py").write_text("x = 2\n")
    edited = code_version(repo)
    assert edited["commit"] == clean["commit"] and edited["dirty"] is True
    assert describe(edited) == clean["commit"] + "-dirty" and code_tag(edited) == f"code:{clean['commit'][:12]}-dirty"
    outside = code_version(tmp_path / "not-a-checkout")
    assert outside["commit"] is None and code_tag(outside).startswith("code:")


def test_a_worker_at_other_code_is_refused_naming_both():
    here = {"commit": "a" * 40, "dirty": False, "package": "0.1.0"}
    assert check_pin("a" * 40, here) == ""
    for pin in (None, "", "{{ $DISTILLERY_CODE }}", "1.2.3"):  # a deployment made without a pin pins nothing
        assert check_pin(pin, here) == ""
    with pytest.raises(DistilleryError, match=f"runs code {'a' * 40} .* made from {'b' * 40}.*check out bbbbbbbbbbbb"):
        refuse_other_code("b" * 40, here)
    assert "made from" in check_pin("a" * 40 + "-dirty", here)  # deployed from an edited tree, run on a clean one
    assert "made from" in check_pin("a" * 40, {**here, "dirty": True})  # and the other way round
    assert check_pin("a" * 40, {**here, "commit": None}) == ""  # cannot tell (an image without .git): not refused


def test_an_image_without_git_names_its_commit_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_IMAGE_CODE", "c" * 40)
    assert code_version(tmp_path)["commit"] == "c" * 40
