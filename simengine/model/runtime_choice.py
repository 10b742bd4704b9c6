"""Which runtime embeds fastest on this machine, within tolerance of fp32: measured once per machine and model export,
recorded next to the model cache, and reused.

Candidates run the same ONNX export: ONNX Runtime fp32, OpenVINO fp32, and OpenVINO bf16 where the CPU has AMX or
AVX512-BF16. Each embeds a fixed probe batch; one whose features drift from ONNX Runtime fp32's (mean cosine below
PROBE_MIN_COSINE) is never chosen, and a reduced precision is chosen only once the accuracy gate has passed it on
this machine (`record_gate`: P@1, MAP@R, pair and triplet accuracy within GATE_TOLERANCE of fp32, measured by
benchmarks/latency.py), with the same OpenVINO version and CPU flags. Where nothing else is installed or eligible,
ONNX Runtime fp32 is the answer.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from simengine.model.runtimes import (OnnxRuntime, OpenVinoRuntime, Runtime, onnxruntime_version, openvino_version,
                                     probe_batch)

log = logging.getLogger(__name__)

# The vector-instruction flags that decide which kernels run (AVX2-only machines differ from AVX-512/AMX ones).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
             "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REDUCED = ("bf16",)  # precisions that need the accuracy gate
PROBE_BATCH = 32
PROBE_MIN_COSINE = 0.999
GATE_TOLERANCE = 0.002
TIMED_RUNS = 3
RECORD_VERSION = 1  # bumped when the runtimes' settings change, so that old measurements are not reused


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


def candidates(flags: list[str]) -> list[str]:
    """The runtimes worth measuring here."""
    names = ["onnxruntime"]
    if openvino_version() is not None:
        names.append("openvino")
        if any(f in flags for f in BF16_FLAGS):
            names.append("openvino-bf16")
    return names


def make_runtime(onnx_path: str | os.PathLike, name: str) -> Runtime:
    if name == "onnxruntime":
        return OnnxRuntime(onnx_path)
    if name in ("openvino", "openvino-bf16"):
        return OpenVinoRuntime(onnx_path, "bf16" if name.endswith("bf16") else "fp32")
    raise ValueError(name)


@functools.cache
def _machine() -> dict[str, Any]:
    """What a measurement holds for: the CPU, the cores this process may use, the runtimes' versions."""
    cpu, flags = cpu_facts()
    return {"cpu": cpu, "cpu_flags": flags, "arch": platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "onnxruntime": onnxruntime_version(), "openvino": openvino_version(), "record_version": RECORD_VERSION}


def _choice_path(export_sha256: str) -> Path:
    from simengine.locations import cache_dir

    return cache_dir() / "runtimes" / f"choice-{export_sha256[:16]}.json"


def recorded_choice(export_sha256: str) -> dict[str, Any] | None:
    """The choice measured on this machine for this export, or None when none was (without measuring)."""
    record = _read(_choice_path(export_sha256))
    if record is None or record.get("machine") != _machine() or record.get("export_sha256") != export_sha256:
        return None
    for row in record["measured"]:  # a gate verdict given since the measurement makes it stale
        if row["runtime"].endswith(REDUCED) and row.get("gate") != gate_result(export_sha256, row["runtime"]):
            return None
    return record


def choose_runtime(onnx_path: str | os.PathLike, export_sha256: str, input_shape: tuple[int, ...]
                   ) -> tuple[Runtime, dict[str, Any]]:
    """The fastest eligible runtime for this export on this machine, and the record of why (measured once, then
    read from the record)."""
    record = recorded_choice(export_sha256)
    if record is None:
        record = _measure(onnx_path, export_sha256, input_shape, _machine())
        _write(_choice_path(export_sha256), record)
    try:
        return make_runtime(onnx_path, record["chosen"]), record
    except Exception as exc:  # a runtime that measured well but cannot start now: the safe default
        log.warning("runtime %s unavailable (%s); using onnxruntime", record["chosen"], exc)
        return OnnxRuntime(onnx_path), dict(record, chosen="onnxruntime")


def _measure(onnx_path, export_sha256: str, input_shape: tuple[int, ...], machine: dict[str, Any]) -> dict[str, Any]:
    # Imported here, not at the top: benchmarks/common.py takes cpu_facts from this module, also when it runs
    # beside an older simengine (benchmarks/index_write.py's format-1 side), whose evaluation was one module.
    from simengine.evaluation.metrics import row_cosines

    probe = probe_batch(input_shape, PROBE_BATCH)
    reference = OnnxRuntime(onnx_path)(probe)  # fp32, the yardstick of every candidate
    rows = []
    for name in candidates(machine["cpu_flags"]):
        try:
            runtime = make_runtime(onnx_path, name)
            out = runtime(probe)  # the first call also warms up
            seconds = []
            for _ in range(TIMED_RUNS):
                started = time.perf_counter()
                runtime(probe)
                seconds.append(time.perf_counter() - started)
        except Exception as exc:  # an optional runtime that fails here is not a candidate
            rows.append({"runtime": name, "error": str(exc)})
            continue
        cosine = float(np.mean(row_cosines(out, reference)))
        reduced = name.endswith(REDUCED)
        gate = gate_result(export_sha256, name) if reduced else None
        rows.append({"runtime": name, "images_per_s": round(PROBE_BATCH / float(np.median(seconds)), 1),
                     "mean_cosine_to_fp32": round(cosine, 6), "gate": gate,
                     "eligible": cosine >= PROBE_MIN_COSINE and (not reduced or bool(gate and gate["passed"]))})
    eligible = [r for r in rows if r.get("eligible")]
    chosen = max(eligible, key=lambda r: r["images_per_s"])["runtime"] if eligible else "onnxruntime"
    log.info("embedding runtime chosen by measurement: %s (%s)", chosen,
             ", ".join(f"{r['runtime']} {r.get('images_per_s', 'failed')}" for r in rows))
    return {"export_sha256": export_sha256, "machine": machine, "measured": rows, "chosen": chosen,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def gate_path(export_sha256: str, runtime: str) -> Path:
    from simengine.locations import cache_dir

    return cache_dir() / "runtimes" / f"gate-{export_sha256[:16]}-{runtime}.json"


def record_gate(export_sha256: str, runtime: str, reference: dict[str, float], measured: dict[str, float]
                ) -> dict[str, Any]:
    """Store the accuracy gate's verdict for a reduced-precision runtime on this machine: passed when every metric is
    within GATE_TOLERANCE of the fp32 reference. A new verdict invalidates the runtime choice."""
    worst = max(abs(measured[k] - reference[k]) for k in reference)
    verdict = {"runtime": runtime, "export_sha256": export_sha256, "machine": _gate_machine(), "reference": reference,
               "measured": measured, "largest_difference": worst, "tolerance": GATE_TOLERANCE,
               "passed": worst <= GATE_TOLERANCE}
    _write(gate_path(export_sha256, runtime), verdict)
    _choice_path(export_sha256).unlink(missing_ok=True)
    return verdict


def _gate_machine() -> dict[str, Any]:
    """What a verdict holds for: the CPU and its flags, and the OpenVINO that ran the kernels."""
    machine = _machine()
    return {k: machine[k] for k in ("cpu", "cpu_flags", "arch", "openvino")}


def gate_result(export_sha256: str, runtime: str) -> dict[str, Any] | None:
    """The gate's verdict for this runtime and export on this machine, or None when it has not run here."""
    verdict = _read(gate_path(export_sha256, runtime))
    if verdict is None or verdict.get("export_sha256") != export_sha256 or verdict.get("machine") != _gate_machine():
        return None
    return verdict


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, record: dict[str, Any]) -> None:
    """Atomically, and only as a cache: a read-only cache folder costs a measurement per process, not a failure."""
    from simengine.index.store import write_durably

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, json.dumps(record, indent=2).encode())
    except OSError as exc:
        log.warning("cannot record %s: %s", path, exc)
