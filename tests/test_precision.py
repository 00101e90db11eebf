"""Device and precision: 'auto' resolved once at the edge, into the cache key; bad requests refused."""

import pytest

from flows.presets import build_config, emotion
from tasks.training import device as precision
from tasks.stages import teacher
from tasks.errors import DistilleryError
from tasks.training.device import resolve_device, resolve_precision

AMX = {"avx512f", "amx_bf16", "amx_int8"}
ZEN4 = {"avx512f", "avx512_bf16"}
OLD = {"avx2", "fma"}


def test_auto_precision_is_bf16_only_where_the_hardware_has_it():
    assert resolve_precision("auto", "cpu", "--teacher-precision", AMX) == "bf16"
    assert resolve_precision("auto", "cpu", "--teacher-precision", ZEN4) == "bf16"
    assert resolve_precision("auto", "cpu", "--teacher-precision", OLD) == "fp32"
    assert resolve_precision("auto", "cuda", "--teacher-precision", OLD) == "bf16"
    assert resolve_precision("fp32", "cpu", "--teacher-precision", AMX) == "fp32"


def test_bf16_without_native_support_is_refused_unless_meant(monkeypatch):
    monkeypatch.delenv(precision.EMULATION_OVERRIDE, raising=False)
    with pytest.raises(DistilleryError) as refused:
        resolve_precision("bf16", "cpu", "--student-precision", OLD)
    message = str(refused.value)
    assert "emulated" in message and "--student-precision fp32" in message and precision.EMULATION_OVERRIDE in message
    monkeypatch.setenv(precision.EMULATION_OVERRIDE, "1")
    assert resolve_precision("bf16", "cpu", "--student-precision", OLD) == "bf16"


def test_cuda_where_there_is_none_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "cuda_available", lambda: False)
    with pytest.raises(DistilleryError, match="--device cuda: torch sees no CUDA device.*--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


def test_auto_is_resolved_at_the_edge_into_every_training_stage(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: ZEN4)
    config = build_config(emotion(), data="./x")
    assert (config.teacher.device, config.teacher.precision) == ("cpu", "bf16")
    assert (config.student.device, config.student.precision) == ("cpu", "bf16")
    assert (config.soft_labels.device, config.soft_labels.precision) == ("cpu", "bf16")  # teacher inference as trained
    monkeypatch.setattr(precision, "cpu_flags", lambda: OLD)
    assert build_config(emotion(), data="./x").teacher.precision == "fp32"
    fixed = build_config(emotion(), data="./x", overrides={"teacher": {"precision": "fp32"}, "student": {"precision": "auto"}})
    assert fixed.teacher.precision == fixed.soft_labels.precision == "fp32"


def test_precision_and_device_are_part_of_the_cache_key():
    from artifacts.store import ArtifactRef

    tokens = {"tokens": ArtifactRef(kind="tokens", digest="a" * 64)}
    keys = {teacher.STAGE.key(teacher.TeacherParams(precision=p, device="cpu"), tokens) for p in ("fp32", "bf16")}
    assert len(keys) == 2


def test_bad_precision_from_the_command_line_is_refused_before_any_work(monkeypatch):
    from flows.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser("emotion", emotion()).parse_args(["--teacher-precision", "fp8"])


def test_bf16_training_trains_and_reports_what_ran(emotion_slice):
    from artifacts.stage import run_stage
    from artifacts.store import ArtifactStore
    from conftest import EMOTION_LABELS
    from tasks.stages import fetch, tokenize
    from tasks.data.sources import DataParams

    import os
    os.environ[precision.EMULATION_OVERRIDE] = "1"  # the check is tested above; here bf16 must simply run
    try:
        store = ArtifactStore(emotion_slice.parent / "store")
        dataset = run_stage(fetch.STAGE, DataParams(source=str(emotion_slice), label_names=EMOTION_LABELS), {}, store)
        tokens = run_stage(tokenize.STAGE, tokenize.TokenizeParams(tokenizer="tiny-mpnet", max_length=32), {"dataset": dataset}, store)
        made = run_stage(teacher.STAGE, teacher.TeacherParams(model="tiny-mpnet", epochs=2, learning_rate=3e-3, batch_size=16,
                                                              precision="bf16", device="cpu"), {"tokens": tokens}, store)
    finally:
        del os.environ[precision.EMULATION_OVERRIDE]
    metrics = store.manifest(made)["metrics"]
    assert (metrics["precision"], metrics["device"]) == ("bf16", "cpu")
    assert metrics["matmul_dtype"] == "bfloat16"  # what ran, read off the model's first Linear layer
    assert metrics["final_loss"] < 1.79  # below uniform guessing over 6 classes (ln 6)
    import safetensors.torch

    weights = safetensors.torch.load_file(str(store.open(made) / "model" / "model.safetensors"))
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}  # autocast: the weights stay FP32
