"""Where training and teacher inference run, and in which precision.

`auto` is resolved once, at the edge (flows/presets.py), to a concrete value that
enters the stage's parameters, so a cache key says what actually ran:
- device: `cuda` when torch sees a GPU, else `cpu`;
- precision: `bf16` (autocast: matmuls in bfloat16, weights and optimizer state stay
  FP32) where the hardware has it natively: CUDA, or a CPU with AMX-BF16 or
  AVX512-BF16 (read from /proc/cpuinfo); else `fp32`. Elsewhere bf16 would be
  emulated, several times slower than FP32, so asking for it there is refused unless
  DISTILLERY_ALLOW_EMULATED_BF16=1 says it is meant.
Exported models and INT8 are unaffected: they are made from the FP32 weights.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tasks.errors import DistilleryError

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
EMULATION_OVERRIDE = "DISTILLERY_ALLOW_EMULATED_BF16"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str, flag: str = "--device") -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise DistilleryError(f"{flag} cuda: torch sees no CUDA device on this machine (CPU-only build or no GPU); "
                              f"use {flag} cpu or auto")
    return device


def native_bf16(device: str, flags: set[str] | None = None) -> bool:
    if device == "cuda":
        return True
    return bool((cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))


def resolve_precision(precision: str, device: str, flag: str, flags: set[str] | None = None) -> str:
    native = native_bf16(device, flags)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native and os.environ.get(EMULATION_OVERRIDE) != "1":
        raise DistilleryError(
            f"{flag} bf16: this CPU has no native bfloat16 ({' or '.join(NATIVE_BF16_FLAGS)} missing from its flags), "
            f"so bf16 would be emulated and slower than FP32; use {flag} fp32 (or auto), or set "
            f"{EMULATION_OVERRIDE}=1 to run it anyway")
    return precision


def autocast(precision: str, device: str):
    """The context training and teacher inference run in."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- threads and the CPU's other users ------------------------------------------------------
def usable_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity: a container or taskset may limit it)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int] | None = None, sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among `cpus`: SMT siblings (two logical CPUs of one core) count once."""
    cpus = usable_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology to read: each logical CPU is its own core
    return max(1, len(cores))


def cpu_share_warning(label: str, threads: int, cores: int, load: float) -> str:
    """A warning when other processes keep more cores busy than this one leaves free ("" otherwise).

    `load` is the 1-minute load average, taken as this stage starts: this process counts
    in it for about one busy thread (it loaded data and a model just before), so the
    others' share is load - 1. Two torch jobs of 2 threads each on 2 cores ran 3-10x
    slower each (issue 37): oversubscription costs far more than the share it takes."""
    others = max(0.0, load - 1.0)
    if others <= max(0, cores - threads) + 0.5:
        return ""
    return (f"{label}: another process keeps the CPU busy (1-minute load {load:.1f} on {cores} physical "
            f"core{'s' if cores != 1 else ''}, {threads} torch thread{'s' if threads != 1 else ''} here), so this stage "
            f"will run slower than the estimate of a machine to itself: threads of two jobs on the same cores slow "
            f"each other several times over. Let the other job finish, or give each its own cores (e.g. "
            f"OMP_NUM_THREADS=1 for both on 2 cores)")


def settle_threads(label: str, log) -> int:
    """Torch's intra-op threads capped to the physical cores this process may use (never more threads
    than cores: SMT siblings and cores outside the affinity only oversubscribe); warns, through `log`,
    when another heavy process shares those cores. Returns the thread count."""
    import torch

    cores = physical_cores()
    threads = torch.get_num_threads()
    if threads > cores:
        torch.set_num_threads(cores)
        log(f"{label}: torch threads {threads} -> {cores}, the physical cores this process may use")
        threads = cores
    if hasattr(os, "getloadavg"):
        warning = cpu_share_warning(label, threads, cores, os.getloadavg()[0])
        if warning:
            log(warning)
    return threads
