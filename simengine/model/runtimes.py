"""Inference runtimes for a backbone: ONNX Runtime and OpenVINO over the same ONNX export (no torch), and torch eager
(the fallback). `runtime_choice` picks among them by measurement."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from simengine.errors import SimengineError

log = logging.getLogger(__name__)

# Exported graphs must agree with torch to this many units of absolute feature error on the probe batch.
EXPORT_TOLERANCE = 1e-3
PROBE_SEED = 1234


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or `taskset` narrows; all of them
    where the platform has no affinity, as on macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Runtime(Protocol):
    name: str
    features_tag: str  # what sets its features apart from fp32 ones ("" for fp32), so they are cached apart
    model_sha256: str | None  # the model file it runs when that is not the export (an int8 model), for the gate

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class TorchRuntime:
    """torch eager, channels_last, inference_mode."""

    name = "torch"
    features_tag = ""
    model_sha256 = None

    def __init__(self, model):
        import torch

        self._torch = torch
        self.model = model.eval().to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).contiguous(memory_format=torch.channels_last)
            return self.model(x).float().numpy()


class OnnxRuntime:
    """An ONNX Runtime CPU session over an exported graph with one input and one output."""

    name = "onnxruntime"
    features_tag = ""
    model_sha256 = None

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(batch, dtype=np.float32)})[0]


class OpenVinoRuntime:
    """OpenVINO on the CPU over the ONNX export (or an int8 model quantized from it, see `model.quantize`), compiled
    once per machine into OpenVINO's model cache. `precision` "bf16" runs in bfloat16 where the CPU has it (AMX or
    AVX512-BF16; OpenVINO falls back to fp32 elsewhere). One infer request, so one caller at a time (the service
    embeds on one batcher thread)."""

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", cache: str | os.PathLike | None = None,
                 name: str | None = None, features_tag: str | None = None, model_sha256: str | None = None):
        import openvino as ov

        from simengine.files import cache_dir

        if precision not in PRECISIONS:
            raise SimengineError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.name = name or ("openvino" if precision == "fp32" else f"openvino-{precision}")
        self.features_tag = features_tag if features_tag is not None else ("" if precision == "fp32" else precision)
        self.model_sha256 = model_sha256
        # LATENCY: one stream over every core. THROUGHPUT splits the cores into streams that one synchronous
        # request cannot fill (54-62 images/s against 125 here, on 2 cores).
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                  "CACHE_DIR": str(cache or cache_dir() / "openvino")}
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})[self.output]
        return np.asarray(result, dtype=np.float32)


PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def openvino_version() -> str | None:
    """From the package's metadata: importing OpenVINO to ask would cost every cold query its load time."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def probe_batch(input_shape: tuple[int, ...], n: int = 4) -> np.ndarray:
    """A fixed batch for checking that an export computes what the torch module computes."""
    return np.random.default_rng(PROBE_SEED).standard_normal((n, *input_shape)).astype(np.float32)


def export_onnx(module, path: str | os.PathLike, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Export a torch module to ONNX (dynamic batch), check ORT against torch on the probe batch, return its record."""
    import torch

    from simengine.files import sha256_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    module = module.eval().float()
    example = torch.from_numpy(probe_batch(input_shape, 2))
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but, unlike dynamo export, needs no onnxscript and is proven here.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), str(tmp), input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17, dynamo=False,
        )
    probe = probe_batch(input_shape)
    with torch.inference_mode():
        expected = module(torch.from_numpy(probe)).float().numpy()
    got = OnnxRuntime(tmp)(probe)
    diff = float(np.abs(expected - got).max())
    if not diff <= EXPORT_TOLERANCE:
        tmp.unlink(missing_ok=True)
        raise SimengineError(f"ONNX export of {path.name} differs from torch by {diff:.2e}")
    os.replace(tmp, path)
    return {"file": path.name, "sha256": sha256_file(path), "onnxruntime": onnxruntime_version(),
            "probe_max_abs_diff": diff}
