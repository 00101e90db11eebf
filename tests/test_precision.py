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


def _sysfs(root, cores_of):
    """A fake /sys/devices/system/cpu: logical CPU -> (package, core)."""
    for cpu, (package, core) in cores_of.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_smt_siblings_count_as_one_physical_core_and_only_usable_cpus_count(tmp_path):
    sysfs = _sysfs(tmp_path, {0: (0, 0), 1: (0, 0), 2: (0, 1), 3: (0, 1), 4: (1, 0)})
    assert precision.physical_cores({0, 1, 2, 3, 4}, sysfs) == 3  # core 0 of package 1 is another core
    assert precision.physical_cores({0, 1}, sysfs) == 1  # an affinity of two siblings: one core
    assert precision.physical_cores({7}, sysfs) == 1  # no topology: each CPU its own core


def test_another_heavy_process_on_the_cores_is_warned_of_only_when_it_oversubscribes():
    warn = precision.cpu_share_warning
    assert warn("fine_tune_teacher", 2, 2, 1.0) == ""  # the load is this process's own
    message = warn("fine_tune_teacher", 2, 2, 2.1)  # another job keeps a core busy under 2 threads here
    assert message.startswith("fine_tune_teacher: another process keeps the CPU busy (1-minute load 2.1 on 2 physical cores")
    assert "OMP_NUM_THREADS=1" in message
    assert warn("fine_tune_teacher", 1, 2, 2.0) == ""  # one thread here, one core left for the other
    assert warn("fine_tune_teacher", 1, 2, 3.2) != ""  # two other busy threads on the 2 cores


def test_torch_threads_are_capped_to_the_physical_cores_and_a_busy_cpu_is_logged(monkeypatch):
    import torch

    before = torch.get_num_threads()
    lines = []
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(precision, "physical_cores", lambda: 1)
        monkeypatch.setattr(precision.os, "getloadavg", lambda: (4.0, 1.0, 1.0))
        assert precision.settle_threads("fine_tune_teacher", lines.append) == 1
        assert torch.get_num_threads() == 1
        assert lines[0] == "fine_tune_teacher: torch threads 2 -> 1, the physical cores this process may use"
        assert "another process keeps the CPU busy (1-minute load 4.0 on 1 physical core, 1 torch thread here)" in lines[1]
        lines.clear()
        monkeypatch.setattr(precision.os, "getloadavg", lambda: (0.5, 1.0, 1.0))
        assert precision.settle_threads("distil_student", lines.append) == 1 and lines == []  # nothing to say
    finally:
        torch.set_num_threads(before)
