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
