"""Run metadata recorded with every trial: package versions, git commit, hardware (AlgoPerf
records the same, so that a number can be traced to the code and machine that produced it)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGES = (
    "specbench", "torch", "deepspeed", "ray", "transformers", "timm", "datasets",
    "pyarrow", "pandas", "numpy", "pydantic", "pytorch-optimizer", "heavyball",
)


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the specbench source tree ('+dirty' when it has uncommitted changes), or
    'unknown' outside a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: SIMD levels, widest first: the first one the CPU's flags name is its vector width for float32.
SIMD_LEVELS = ("avx512f", "avx2", "avx", "sse4_2")


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is no such file)."""
    fields: dict[str, str] = {}
    try:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_type(cpu: dict[str, str]) -> str:
    """What kind of CPU timed a trial, precise enough to tell two generations apart.

    A virtual machine's model name is often only the brand ("AMD EPYC" for a 2017 Zen 1 with
    AVX2 at half rate and for a Zen 4 with AVX-512 alike: one third of the matmul rate); the
    vendor's family and model numbers and the widest SIMD level tell them apart. Two trials with
    the same string ran on the same kind of CPU; ``"unknown"`` where nothing is known.
    """
    if not cpu:
        return "unknown"
    flags = set(cpu.get("flags", "").split())
    simd = next((level for level in SIMD_LEVELS if level in flags), "")
    ident = " ".join(f"{k} {cpu[k]}" for k in ("cpu family", "model") if k in cpu)
    detail = "; ".join(p for p in (f"{cpu.get('vendor_id', '')} {ident}".strip(), simd) if p)
    name = cpu.get("model name", "CPU")
    return f"{name} ({detail})" if detail else name


def machine_type(cpu: str, gpu: object = None) -> str:
    """The kind of machine a trial ran on: its :func:`cpu_type` and, where the trial's process
    sees one, the GPU model (not their count: a Ray worker sees only the GPUs it was given)."""
    return f"{cpu} + {gpu}" if gpu else cpu


def hardware() -> dict[str, object]:
    import torch

    info: dict[str, object] = {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    cpu = cpu_info()
    if "model name" in cpu:
        info["cpu_model"] = cpu["model name"]
    info["cpu_type"] = cpu_type(cpu)
    info["machine_type"] = machine_type(str(info["cpu_type"]), info.get("gpu"))
    try:
        with open("/proc/meminfo") as fh:
            info["memory_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info
