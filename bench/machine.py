"""The machine a benchmark ran on, recorded with every result: figures from a shared
2-core VM mean nothing without it.

The model name alone is not enough: "AMD EPYC" has been a Zen 4 and a Zen 5 (CPU family
26) here, and MPNet's bf16 fine-tuning ran 1.66x FP32 on the first and 1.92x on the
second (2.33x over a whole run). So the family, model and native bf16 flags go in too."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpuinfo(field: str) -> str | None:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.split(":", 1)[0].strip() == field), None)


def machine() -> dict:
    from tasks.precision import NATIVE_BF16_FLAGS, cpu_flags

    cpu = _cpuinfo("model name") or platform.processor()
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import torch

    return {"cpu": cpu, "cpu_family": _cpuinfo("cpu family"), "cpu_model": _cpuinfo("model"),
            "native_bf16_flags": sorted(cpu_flags() & set(NATIVE_BF16_FLAGS)), "cores": os.cpu_count(), "memory_gib": memory, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def machine_line(m: dict) -> str:
    family = f" (family {m['cpu_family']} model {m['cpu_model']}; native bf16: {', '.join(m['native_bf16_flags']) or 'none'})" \
        if m.get("cpu_family") else ""
    return (f"Machine: {m['cpu']}{family}, {m['cores']} cores, {m['memory_gib']} GiB, torch threads {m['torch_threads']}; "
            f"commit {m['commit']}, {m['date']}")
