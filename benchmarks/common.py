"""Shared by the benchmark scripts: machine and version facts, and writing results as JSON + Markdown."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PACKAGES = ("simengine", "torch", "timm", "onnxruntime", "faiss-cpu", "numpy", "pillow")
# The vector-instruction flags that decide which kernels run (AVX2-only machines differ from AVX-512/AMX ones).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
             "amx_int8")


def cpu_facts() -> tuple[str, list[str]]:
    """The CPU model and which of CPU_FLAGS it has (from /proc/cpuinfo)."""
    cpu, flags = platform.processor() or "", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return cpu, [f for f in CPU_FLAGS if f in flags]


def environment() -> dict:
    """Machine, versions and the exact command, recorded with every result."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu, flags = cpu_facts()
    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": versions,
    }


def write(name: str, result: dict, markdown: str, out: Path = RESULTS) -> Path:
    """Write out/<name>.json and out/<name>.md (the Markdown ends with the environment)."""
    out.mkdir(parents=True, exist_ok=True)
    env = result.setdefault("environment", environment())
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    footer = (f"\n\nCommand: `{env['command']}`  \nMachine: {env['machine']['cpu']}, {env['machine']['cores']} cores, "
              f"flags {' '.join(env['machine'].get('cpu_flags', [])) or 'unknown'}, "
              f"Python {env['machine']['python']}  \nVersions: "
              + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + f"  \nDate: {env['date']}\n")
    (out / f"{name}.md").write_text(markdown + footer)
    return out / f"{name}.json"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats get 4 decimals."""
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
