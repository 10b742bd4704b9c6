"""Which runtime embeds fastest on this machine, within tolerance of fp32: measured once per machine and model export,
recorded next to the model cache, and reused.

Candidates run the same ONNX export: ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 where the CPU has AMX or
AVX512-BF16, and OpenVINO int8 where the bundle holds a model quantized from the export (`model.quantize`). Each
embeds a fixed probe batch. One whose features drift from ONNX Runtime fp32's (mean cosine below PROBE_MIN_COSINE;
int8's is recorded but does not decide, because random probe pixels lie outside the range it was calibrated on) is
never chosen. A reduced precision is chosen only once the accuracy gate passed the very model it runs on this machine
(`record_gate`: P@1, MAP@R, pair and triplet accuracy within GATE_TOLERANCE of fp32 on labelled images, see
`model.runtime_gate`), with the same OpenVINO version and CPU flags. Where nothing else is installed or
eligible, ONNX Runtime fp32 is the answer. Processes that start together measure one at a time, and the later ones
find the record written (two measurements at once would time each other).

Timings are noisy: the candidates run in turn, round after round, and each is judged by its median, so that a burst
of other work slows all of them rather than one. A measurement taken while the machine was busy (load per core above
LOAD_LIMIT) is provisional: it is used, and measured again by the first process that finds the machine quiet. New
runtime versions, CPU flags or settings (RECORD_VERSION) make a record stale.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from simengine.model.runtimes import (OnnxRuntime, OpenVinoRuntime, Runtime, onnxruntime_version, openvino_version,
                                     probe_batch, usable_cores)

log = logging.getLogger(__name__)

# The vector-instruction flags that decide which kernels run (AVX2-only machines differ from AVX-512/AMX ones).
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
             "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REDUCED = ("bf16", "int8")  # precisions that need the accuracy gate
PROBE_BATCH = 16
PROBE_MIN_COSINE = 0.999
# int8 is judged by the gate alone: random probe pixels lie outside the range it was calibrated on (0.98 here).
PROBE_EXEMPT = ("int8",)
GATE_TOLERANCE = 0.002
TIMED_ROUNDS = 5
LOAD_LIMIT = 0.5  # the 1-minute load average per usable core above which a measurement is provisional
MEASUREMENT_LOCK_TIMEOUT_S = 600.0
RECORD_VERSION = 3  # bumped when the runtimes' settings change, so that old measurements are not reused


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


def candidates(flags: list[str], onnx_path: str | os.PathLike, export_sha256: str) -> list[str]:
    """The runtimes worth measuring here for this export."""
    from simengine.model.quantize import int8_model

    names = ["onnxruntime"]
    if openvino_version() is not None:
        names.append("openvino")
        if any(f in flags for f in BF16_FLAGS):
            names.append("openvino-bf16")
        if int8_model(onnx_path, export_sha256) is not None:
            names.append("openvino-int8")
    return names


def make_runtime(onnx_path: str | os.PathLike, name: str, export_sha256: str, model_sha256: str | None = None
                 ) -> Runtime:
    """The runtime `name` over this export (int8: the model quantized from it; with `model_sha256`, only that one)."""
    if name == "onnxruntime":
        return OnnxRuntime(onnx_path)
    if name in ("openvino", "openvino-bf16"):
        return OpenVinoRuntime(onnx_path, "bf16" if name.endswith("bf16") else "fp32")
    if name == "openvino-int8":
        from simengine.errors import SimengineError
        from simengine.model.quantize import int8_model, int8_sha256

        found = int8_model(onnx_path, export_sha256)
        if found is None:
            raise SimengineError(f"{Path(onnx_path).parent}: no int8 model quantized from this export; run "
                                 "`simengine quantize --model MODEL --data IMAGES`")
        xml, record = found
        sha = int8_sha256(record)
        if model_sha256 is not None and sha != model_sha256:
            raise SimengineError(f"{xml}: changed since it was measured")
        return OpenVinoRuntime(xml, name=name, features_tag=f"int8-{sha[:12]}", model_sha256=sha)
    raise ValueError(name)


def runtime_model_sha256(onnx_path: str | os.PathLike, export_sha256: str, name: str) -> str:
    """The hash of the model file(s) a runtime runs: what its gate verdict holds for."""
    if name == "openvino-int8":
        from simengine.model.quantize import int8_model, int8_sha256

        found = int8_model(onnx_path, export_sha256)
        return int8_sha256(found[1]) if found else ""
    return export_sha256


@functools.cache
def _machine() -> dict[str, Any]:
    """What a measurement holds for: the CPU, the cores this process may use, the runtimes' versions."""
    cpu, flags = cpu_facts()
    return {"cpu": cpu, "cpu_flags": flags, "arch": platform.machine(), "cores": usable_cores(),
            "onnxruntime": onnxruntime_version(), "openvino": openvino_version(), "record_version": RECORD_VERSION}


def _choice_path(onnx_path: str | os.PathLike, export_sha256: str) -> Path:
    """One record per export and int8 model beside it (none: "fp"): copies of a bundle, and its general twin, share
    the export but not always an int8 model, and each keeps its own measurement."""
    from simengine.files import cache_dir

    int8 = runtime_model_sha256(onnx_path, export_sha256, "openvino-int8")
    return cache_dir() / "runtimes" / f"choice-{export_sha256[:16]}-{int8[:12] or 'fp'}.json"


def recorded_choice(onnx_path: str | os.PathLike, export_sha256: str) -> dict[str, Any] | None:
    """The choice measured on this machine for this export and the models beside it, or None when none was
    (without measuring), or when it is stale: other candidates, another reduced-precision model, or a gate verdict
    given since."""
    record = _read(_choice_path(onnx_path, export_sha256))
    if record is None or record.get("machine") != _machine() or record.get("export_sha256") != export_sha256:
        return None
    if [row["runtime"] for row in record["measured"]] != candidates(record["machine"]["cpu_flags"], onnx_path,
                                                                    export_sha256):
        return None
    for row in record["measured"]:
        if row["runtime"].endswith(REDUCED) and "error" not in row and (
                row.get("model_sha256") != runtime_model_sha256(onnx_path, export_sha256, row["runtime"])
                or row.get("gate") != gate_result(row["model_sha256"], row["runtime"])):
            return None
    return record


def choose_runtime(onnx_path: str | os.PathLike, export_sha256: str, input_shape: tuple[int, ...]
                   ) -> tuple[Runtime, dict[str, Any]]:
    """The fastest eligible runtime for this export on this machine, and the record of why (measured once, then
    read from the record; a provisional one is measured again once the machine is quiet)."""
    record = recorded_choice(onnx_path, export_sha256)
    if record is None or _to_measure_again(record):
        with _measurement_lock():
            record = recorded_choice(onnx_path, export_sha256)  # measured by another process while this one waited
            if record is None or _to_measure_again(record):
                record = _measure(onnx_path, export_sha256, input_shape, _machine())
                _write(_choice_path(onnx_path, export_sha256), record)
    chosen = next((row for row in record["measured"] if row["runtime"] == record["chosen"]), {})
    try:
        return make_runtime(onnx_path, record["chosen"], export_sha256, chosen.get("model_sha256")), record
    except Exception as exc:  # a runtime that measured well but cannot start now: the safe default
        log.warning("runtime %s unavailable (%s); using onnxruntime", record["chosen"], exc)
        return OnnxRuntime(onnx_path), dict(record, chosen="onnxruntime")


@contextlib.contextmanager
def _measurement_lock() -> Iterator[None]:
    """One measurement at a time on this machine: two at once would share the cores and time each other. Where no
    lock can be made (a read-only cache folder, a file system without locks) it measures unlocked rather than fail."""
    from filelock import FileLock, Timeout

    from simengine.files import cache_dir

    path = cache_dir() / "runtimes" / "measure.lock"
    lock = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=MEASUREMENT_LOCK_TIMEOUT_S)
        lock.acquire()
    except (OSError, NotImplementedError, Timeout) as exc:
        log.warning("measuring without the lock %s: %s", path, exc)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _to_measure_again(record: dict[str, Any]) -> bool:
    """A measurement taken under load, while the machine is quiet now."""
    return bool(record.get("provisional")) and _load_per_core() <= LOAD_LIMIT


def _load_per_core() -> float:
    try:
        return os.getloadavg()[0] / usable_cores()
    except OSError:  # no load average on this platform: never provisional
        return 0.0


def _measure(onnx_path, export_sha256: str, input_shape: tuple[int, ...], machine: dict[str, Any]) -> dict[str, Any]:
    # Imported here, not at the top: benchmarks/common.py takes cpu_facts from this module, also when it runs
    # beside an older simengine (benchmarks/index_write.py's format-1 side), whose evaluation was one module.
    from simengine.evaluation.metrics import row_cosines

    load = _load_per_core()
    probe = probe_batch(input_shape, PROBE_BATCH)
    reference = OnnxRuntime(onnx_path)(probe)  # fp32, the yardstick of every candidate
    rows, runtimes, outputs = [], {}, {}
    names = candidates(machine["cpu_flags"], onnx_path, export_sha256)
    for name in names:
        try:
            runtimes[name] = make_runtime(onnx_path, name, export_sha256)
            outputs[name] = runtimes[name](probe)  # the first call also warms up
        except Exception as exc:  # an optional runtime that fails here is not a candidate
            rows.append({"runtime": name, "error": str(exc)})
            runtimes.pop(name, None)
    seconds, errors = _interleaved_seconds(runtimes, probe)
    rows += [{"runtime": name, "error": error} for name, error in errors.items()]
    for name, runtime in runtimes.items():
        if name in errors:
            continue
        cosine = float(np.mean(row_cosines(outputs[name], reference)))
        row = {"runtime": name, "images_per_s": round(PROBE_BATCH / float(np.median(seconds[name])), 1),
               "mean_cosine_to_fp32": round(cosine, 6)}
        close = cosine >= PROBE_MIN_COSINE or name.endswith(PROBE_EXEMPT)
        if name.endswith(REDUCED):
            row["model_sha256"] = runtime.model_sha256 or export_sha256
            row["gate"] = gate_result(row["model_sha256"], name)
            row["eligible"] = close and bool(row["gate"] and row["gate"]["passed"])
        else:
            row["eligible"] = close
        rows.append(row)
    rows.sort(key=lambda r: names.index(r["runtime"]))  # the order `recorded_choice` compares
    eligible = [r for r in rows if r.get("eligible")]
    chosen = max(eligible, key=lambda r: r["images_per_s"])["runtime"] if eligible else "onnxruntime"
    record = {"export_sha256": export_sha256, "machine": machine, "measured": rows, "chosen": chosen,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_per_core": round(load, 2),
              "rounds": TIMED_ROUNDS, "provisional": load > LOAD_LIMIT}
    log.info("embedding runtime measured: %s (`simengine index info` says why)", chosen)
    log.debug("embedding runtime: %s", describe_choice(record))
    return record


def _interleaved_seconds(runtimes: dict[str, Runtime], probe: np.ndarray
                         ) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Seconds per call of each runtime over TIMED_ROUNDS rounds, each round running every runtime once, starting
    with a different one each time; and the error of each that failed on the way (it runs no more)."""
    names, seconds, errors = list(runtimes), {name: [] for name in runtimes}, {}
    for round_ in range(TIMED_ROUNDS):
        first = round_ % len(names) if names else 0
        for name in names[first:] + names[:first]:
            if name in errors:
                continue
            started = time.perf_counter()
            try:
                runtimes[name](probe)
            except Exception as exc:  # an optional runtime that fails here is not a candidate
                errors[name] = str(exc)
                continue
            seconds[name].append(time.perf_counter() - started)
    return {name: s for name, s in seconds.items() if name not in errors}, errors


def describe_choice(record: dict[str, Any]) -> str:
    """One line: the runtime chosen, and why (each candidate's speed and gate verdict, when and under what load)."""
    parts = []
    for row in record["measured"]:
        if "error" in row:
            parts.append(f"{row['runtime']} failed to start")
            continue
        text = f"{row['runtime']} {row['images_per_s']} img/s"
        if row["runtime"].endswith(REDUCED):
            gate = row.get("gate")
            text += (", no accuracy gate run here" if gate is None else
                     f", gate {'passed' if gate['passed'] else 'FAILED'} ({gate['largest_difference']:.4f} of "
                     f"{gate['tolerance']})")
        elif not row.get("eligible"):
            text += ", drifts from fp32"
        parts.append(text)
    busy = " under load: to be measured again when the machine is quiet" if record.get("provisional") else ""
    return (f"{record['chosen']}: the fastest eligible ({'; '.join(parts)}), measured {record['measured_at']}, "
            f"load {record.get('load_per_core', '?')}/core{busy}")


def gate_path(model_sha256: str, runtime: str) -> Path:
    from simengine.files import cache_dir

    return cache_dir() / "runtimes" / f"gate-{model_sha256[:16]}-{runtime}.json"


def record_gate(model_sha256: str, runtime: str, reference: dict[str, float], measured: dict[str, float]
                ) -> dict[str, Any]:
    """Store the accuracy gate's verdict for a reduced-precision runtime running the model `model_sha256` (see
    `runtime_model_sha256`) on this machine: passed when every metric is within GATE_TOLERANCE of the fp32
    reference. A new verdict makes a recorded choice that saw another one stale."""
    worst, passed = gate_verdict(reference, measured)
    verdict = {"runtime": runtime, "model_sha256": model_sha256, "machine": _gate_machine(), "reference": reference,
               "measured": measured, "largest_difference": worst, "tolerance": GATE_TOLERANCE, "passed": passed}
    _write(gate_path(model_sha256, runtime), verdict)
    return verdict


def adopt_gate(verdict: dict[str, Any], model_sha256: str) -> bool:
    """Record a verdict given on another machine for the same model (the built-in model's, made with its package
    data) where it holds: the same CPU flags, architecture and OpenVINO, hence the same kernels. Whether it did."""
    here, there = _gate_machine(), verdict["machine"]
    if any(here[key] != there.get(key) for key in ("cpu_flags", "arch", "openvino")):
        return False
    _write(gate_path(model_sha256, verdict["runtime"]),
           dict(verdict, model_sha256=model_sha256, machine=here, measured_on=there["cpu"]))
    return True


def gate_verdict(reference: dict[str, float], measured: dict[str, float]) -> tuple[float, bool]:
    """The largest difference of any metric from the fp32 reference, and whether it is within GATE_TOLERANCE."""
    worst = max(abs(measured[k] - reference[k]) for k in reference)
    return worst, worst <= GATE_TOLERANCE


def _gate_machine() -> dict[str, Any]:
    """What a verdict holds for: the CPU and its flags, and the OpenVINO that ran the kernels."""
    machine = _machine()
    return {k: machine[k] for k in ("cpu", "cpu_flags", "arch", "openvino")}


def gate_result(model_sha256: str, runtime: str) -> dict[str, Any] | None:
    """The gate's verdict for this runtime and model on this machine, or None when it has not run here."""
    verdict = _read(gate_path(model_sha256, runtime))
    if (not model_sha256 or verdict is None or verdict.get("model_sha256") != model_sha256
            or verdict.get("machine") != _gate_machine()):
        return None
    return verdict


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, record: dict[str, Any]) -> None:
    """Atomically, and only as a cache: a read-only cache folder costs a measurement per process, not a failure."""
    from simengine.files import write_durably

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, json.dumps(record, indent=2).encode())
    except OSError as exc:
        log.warning("cannot record %s: %s", path, exc)
