"""The runtime `auto` chooses: measured once per machine and export, recorded and reused; a reduced precision only
after the accuracy gate passed it here; OpenVINO computes what ONNX Runtime computes."""

import json

import numpy as np
import pytest

from simengine.model import runtime_choice
from simengine.model.encoder import cached_onnx_path
from simengine.model.runtimes import OnnxRuntime, OpenVinoRuntime, probe_batch


@pytest.fixture
def export(encoder):
    path = cached_onnx_path(encoder.identity)
    return path, json.loads(path.with_suffix(".json").read_text())["sha256"], tuple(encoder.identity["data_config"]["input_size"])


def test_openvino_fp32_agrees_with_onnxruntime(export):
    path, _, shape = export
    x = probe_batch(shape, 4)
    assert np.abs(OpenVinoRuntime(path)(x) - OnnxRuntime(path)(x)).max() < 1e-3


def test_the_choice_is_measured_once_and_recorded(export, monkeypatch):
    path, sha, shape = export
    runtime, record = runtime_choice.choose_runtime(path, sha, shape)
    assert runtime.name == record["chosen"] and record["chosen"] in {r["runtime"] for r in record["measured"]}
    assert all(r["mean_cosine_to_fp32"] > 0.999 for r in record["measured"] if "images_per_s" in r)
    monkeypatch.setattr(runtime_choice, "_measure", lambda *a: pytest.fail("measured again"))
    assert runtime_choice.choose_runtime(path, sha, shape)[1] == record == runtime_choice.recorded_choice(sha)


def test_bf16_needs_the_gate_on_this_machine(export, monkeypatch, tmp_path, request):
    """On a CPU with AMX, bf16 is measured but chosen only once the gate passed it (simulated here: this machine's
    OpenVINO runs the bf16 hint in fp32 where the CPU lacks bf16)."""
    path, sha, shape = export
    monkeypatch.setenv("SIMENGINE_CACHE", str(tmp_path))
    cpu, flags = runtime_choice.cpu_facts()
    monkeypatch.setattr(runtime_choice, "cpu_facts", lambda: (cpu, [*flags, "amx_bf16"]))
    monkeypatch.setattr(runtime_choice, "TIMED_RUNS", 1)
    runtime_choice._machine.cache_clear()  # what the machine is, read again under the patched flags
    request.addfinalizer(runtime_choice._machine.cache_clear)
    _, record = runtime_choice.choose_runtime(path, sha, shape)
    bf16 = next(r for r in record["measured"] if r["runtime"] == "openvino-bf16")
    assert bf16["gate"] is None and not bf16["eligible"]
    metrics = {"precision_at_1": 0.986, "map_at_r": 0.978, "pair_accuracy": 0.985, "triplet_accuracy": 0.981}
    failed = runtime_choice.record_gate(sha, "openvino-bf16", metrics, dict(metrics, map_at_r=0.97))
    assert not failed["passed"] and runtime_choice.recorded_choice(sha) is None  # a verdict invalidates the choice
    runtime_choice.record_gate(sha, "openvino-bf16", metrics, dict(metrics, map_at_r=0.9775))
    _, record = runtime_choice.choose_runtime(path, sha, shape)
    bf16 = next(r for r in record["measured"] if r["runtime"] == "openvino-bf16")
    assert bf16["gate"]["passed"] and bf16["eligible"]


def test_named_runtimes_and_bad_names(encoder):
    from simengine.errors import SimengineError
    from simengine.model.encoder import Encoder

    assert Encoder.from_torch(encoder.identity, encoder.torch_model, runtime="openvino").runtime.name == "openvino"
    with pytest.raises(SimengineError, match="unknown runtime"):
        Encoder.from_torch(encoder.identity, encoder.torch_model, runtime="tensorrt")


def test_a_verdict_from_another_openvino_is_not_reused(export, monkeypatch, tmp_path):
    path, sha, _ = export
    monkeypatch.setenv("SIMENGINE_CACHE", str(tmp_path))
    metrics = {"precision_at_1": 0.986, "map_at_r": 0.978, "pair_accuracy": 0.985, "triplet_accuracy": 0.981}
    runtime_choice.record_gate(sha, "openvino-bf16", metrics, metrics)
    assert runtime_choice.gate_result(sha, "openvino-bf16")["passed"]
    verdict = json.loads(runtime_choice.gate_path(sha, "openvino-bf16").read_text())
    verdict["machine"]["openvino"] = "2020.1"
    runtime_choice.gate_path(sha, "openvino-bf16").write_text(json.dumps(verdict))
    assert runtime_choice.gate_result(sha, "openvino-bf16") is None
