"""The machine a benchmark ran on, recorded with every result: figures from a shared
2-core VM mean nothing without it."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "commit": commit or "unknown",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def machine_line(m: dict) -> str:
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, torch threads {m['torch_threads']}; "
            f"commit {m['commit']}, {m['date']}")
