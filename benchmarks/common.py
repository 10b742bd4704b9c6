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

from simengine.model.runtime_choice import cpu_facts

RESULTS = Path(__file__).parent / "results"
PACKAGES = ("simengine-images", "torch", "timm", "onnxruntime", "openvino", "faiss-cpu", "numpy", "pillow")


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
