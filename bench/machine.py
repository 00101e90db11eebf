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


def _first_cpu() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (every core of these VMs is the same model)."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if not line.strip():
            break
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def machine() -> dict:
    from tasks.training.device import NATIVE_BF16_FLAGS, cpu_flags

    cpuinfo = _first_cpu()
    cpu = cpuinfo.get("model name") or platform.processor()
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import torch

    return {"cpu": cpu, "cpu_family": cpuinfo.get("cpu family"), "cpu_model": cpuinfo.get("model"),
            "native_bf16_flags": sorted(cpu_flags() & set(NATIVE_BF16_FLAGS)), "cores": os.cpu_count(), "memory_gib": memory, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def machine_line(m: dict) -> str:
    family = f" (family {m['cpu_family']} model {m['cpu_model']}; native bf16: {', '.join(m['native_bf16_flags']) or 'none'})" \
        if m.get("cpu_family") else ""
    return (f"Machine: {m['cpu']}{family}, {m['cores']} cores, {m['memory_gib']} GiB, torch threads {m['torch_threads']}; "
            f"commit {m['commit']}, {m['date']}")
