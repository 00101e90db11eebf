"""Nothing unsafe is loaded from the store: no pickle, no remote code, no path escapes,
and no code named by a tampered cache record."""

import re

from conftest import REPO, run_cli, store_copy

SOURCES = [p for d in ("artifacts", "tasks", "flows") for p in (REPO / d).rglob("*.py")]


def test_project_code_never_unpickles_or_trusts_remote_code():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*(?!False)", text), path
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert "pickle" not in re.sub(r"#.*|\"\"\"[\s\S]*?\"\"\"", "", text), path


def test_tampered_record_is_refused_and_its_code_never_runs(cold, tmp_path):
    """An old-format cache record naming other code (a decoder to import, or top-level keys that
    would make Prefect unpickle) is refused; Prefect never reads records, so nothing runs."""
    from conftest import old_prefect_record

    from artifacts.store import ArtifactRef, ArtifactStore

    store = store_copy(cold, tmp_path)
    artifacts = ArtifactStore(store)
    marker = tmp_path / "evil-ran"
    evil = tmp_path / "evilpkg"
    evil.mkdir()
    (evil / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\ndef decode(obj):\n    return obj\n")
    quantized = cold[2].summary["stages"]["quantize"]["artifact"]
    key = artifacts.manifest(quantized)["key"]
    artifacts.forget_key(key)  # so the look-up reaches the record
    (store / "records").mkdir()
    ref = ArtifactRef(kind="onnx", digest=quantized)
    (store / "records" / key).write_text(old_prefect_record(ref, object_decoder="evilpkg.decode"))
    run = run_cli([*cold[1], "--store", str(store)], tmp_path, extra_env={"PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert run.code == 0, run.output[-3000:]
    assert "refused" in run.output and "evilpkg.decode" in run.output
    # The refused record is not followed; the INT8 model is found by its manifest, and noted.
    assert run.computed() == set() and run.summary["stages"]["quantize"]["artifact"] == quantized
    assert artifacts.made_under(key).digest == quantized
    assert not marker.exists()
