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
    monkeypatch.setattr(runtime_choice, "_load_per_core", lambda: 0.0)
    runtime, record = runtime_choice.choose_runtime(path, sha, shape)
    assert runtime.name == record["chosen"] and record["chosen"] in {r["runtime"] for r in record["measured"]}
    assert all(r["mean_cosine_to_fp32"] > 0.999 for r in record["measured"] if "images_per_s" in r)
    monkeypatch.setattr(runtime_choice, "_measure", lambda *a: pytest.fail("measured again"))
    assert runtime_choice.choose_runtime(path, sha, shape)[1] == record == runtime_choice.recorded_choice(path, sha)


def test_a_measurement_under_load_is_taken_again_once_the_machine_is_quiet(export, monkeypatch, tmp_path):
    path, sha, shape = export
    monkeypatch.setenv("SIMENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime_choice, "TIMED_ROUNDS", 1)
    monkeypatch.setattr(runtime_choice, "_load_per_core", lambda: 1.7)
    _, busy = runtime_choice.choose_runtime(path, sha, shape)
    assert busy["provisional"] and busy["load_per_core"] == 1.7 and "under load" in runtime_choice.describe_choice(busy)
    assert runtime_choice.choose_runtime(path, sha, shape)[1] == busy  # still busy: not measured under load again
    monkeypatch.setattr(runtime_choice, "_load_per_core", lambda: 0.1)
    assert runtime_choice.recorded_choice(path, sha) == busy  # what `index info` shows until then
    _, quiet = runtime_choice.choose_runtime(path, sha, shape)
    assert not quiet["provisional"] and runtime_choice.recorded_choice(path, sha) == quiet
    monkeypatch.setattr(runtime_choice, "_load_per_core", lambda: 1.7)
    assert runtime_choice.choose_runtime(path, sha, shape)[1] == quiet  # a quiet measurement holds under load too


def test_runtimes_are_timed_in_turn_and_judged_by_their_median(monkeypatch):
    calls = []

    class Slow:
        def __init__(self, name):
            self.name = name

        def __call__(self, batch):
            calls.append(self.name)

    class Broken:
        def __call__(self, batch):
            calls.append("broken")
            raise RuntimeError("kernel not supported")

    monkeypatch.setattr(runtime_choice, "TIMED_ROUNDS", 4)
    seconds, errors = runtime_choice._interleaved_seconds({"a": Slow("a"), "b": Slow("b"), "c": Slow("c")},
                                                          np.zeros(1))
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"] and errors == {}
    assert {k: len(v) for k, v in seconds.items()} == {"a": 4, "b": 4, "c": 4}
    seconds, errors = runtime_choice._interleaved_seconds({"a": Slow("a"), "x": Broken()}, np.zeros(1))
    assert set(seconds) == {"a"} and errors == {"x": "kernel not supported"} and calls.count("broken") == 1


def test_bf16_needs_the_gate_on_this_machine(export, monkeypatch, tmp_path, request):
    """On a CPU with AMX, bf16 is measured but chosen only once the gate passed it (simulated here: this machine's
    OpenVINO runs the bf16 hint in fp32 where the CPU lacks bf16)."""
    path, sha, shape = export
    monkeypatch.setenv("SIMENGINE_CACHE", str(tmp_path))
    cpu, flags = runtime_choice.cpu_facts()
    monkeypatch.setattr(runtime_choice, "cpu_facts", lambda: (cpu, [*flags, "amx_bf16"]))
    monkeypatch.setattr(runtime_choice, "TIMED_ROUNDS", 1)
    runtime_choice._machine.cache_clear()  # what the machine is, read again under the patched flags
    request.addfinalizer(runtime_choice._machine.cache_clear)
    _, record = runtime_choice.choose_runtime(path, sha, shape)
    bf16 = next(r for r in record["measured"] if r["runtime"] == "openvino-bf16")
    assert bf16["gate"] is None and not bf16["eligible"]
    metrics = {"precision_at_1": 0.986, "map_at_r": 0.978, "pair_accuracy": 0.985, "triplet_accuracy": 0.981}
    failed = runtime_choice.record_gate(sha, "openvino-bf16", metrics, dict(metrics, map_at_r=0.97))
    assert not failed["passed"] and runtime_choice.recorded_choice(path, sha) is None  # a verdict since: stale
    runtime_choice.record_gate(sha, "openvino-bf16", metrics, dict(metrics, map_at_r=0.9775))
    _, record = runtime_choice.choose_runtime(path, sha, shape)
    bf16 = next(r for r in record["measured"] if r["runtime"] == "openvino-bf16")
    assert bf16["gate"]["passed"] and bf16["eligible"]


def test_a_verdict_given_elsewhere_is_adopted_only_where_the_kernels_are_the_same(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMENGINE_CACHE", str(tmp_path))
    metrics = {"precision_at_1": 0.986, "map_at_r": 0.978}
    elsewhere = runtime_choice.record_gate("a" * 64, "openvino-int8", metrics, metrics)
    elsewhere["machine"] = dict(elsewhere["machine"], cpu="Another CPU")
    assert runtime_choice.adopt_gate(elsewhere, "b" * 64)
    adopted = runtime_choice.gate_result("b" * 64, "openvino-int8")
    assert adopted["passed"] and adopted["measured_on"] == "Another CPU"
    other_flags = dict(elsewhere, machine=dict(elsewhere["machine"], cpu_flags=["sse4_2"]))
    assert not runtime_choice.adopt_gate(other_flags, "c" * 64)
    assert runtime_choice.gate_result("c" * 64, "openvino-int8") is None


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


def test_an_int8_model_is_measured_but_chosen_only_after_a_passing_gate(export, monkeypatch, tmp_path, encoder, val):
    """Quantizing adds a candidate (the recorded choice no longer applies); int8 is eligible only with a passing
    verdict for that very model; without the model, the measurement made without one applies again."""
    from simengine.model.quantize import INT8_RECORD, int8_sha256, quantize_backbone

    path, sha, shape = export
    monkeypatch.setenv("SIMENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime_choice, "TIMED_ROUNDS", 1)
    onnx = tmp_path / "backbone.onnx"
    onnx.write_bytes(path.read_bytes())
    _, before = runtime_choice.choose_runtime(onnx, sha, shape)
    assert "openvino-int8" not in {r["runtime"] for r in before["measured"]}
    paths = [p for ps in val.values() for p in ps] * 2
    record = quantize_backbone(onnx, sha, encoder.load_image, paths[:16])
    assert runtime_choice.recorded_choice(onnx, sha) is None  # a new candidate
    _, record_ = runtime_choice.choose_runtime(onnx, sha, shape)
    int8 = next(r for r in record_["measured"] if r["runtime"] == "openvino-int8")
    assert int8["gate"] is None and not int8["eligible"] and record_["chosen"] != "openvino-int8"
    metrics = {"precision_at_1": 0.986, "map_at_r": 0.978, "pair_accuracy": 0.985, "triplet_accuracy": 0.981}
    runtime_choice.record_gate(int8_sha256(record), "openvino-int8", metrics, dict(metrics, pair_accuracy=0.984))
    assert runtime_choice.recorded_choice(onnx, sha) is None  # a verdict given since
    _, record_ = runtime_choice.choose_runtime(onnx, sha, shape)
    assert next(r for r in record_["measured"] if r["runtime"] == "openvino-int8")["eligible"]
    # Quantized again (say with --no-gate): another model, which the old verdict does not cover.
    again = quantize_backbone(onnx, sha, encoder.load_image, paths[1:17])
    assert int8_sha256(again) != int8_sha256(record) and runtime_choice.recorded_choice(onnx, sha) is None
    runtime, record_ = runtime_choice.choose_runtime(onnx, sha, shape)
    assert not next(r for r in record_["measured"] if r["runtime"] == "openvino-int8")["eligible"]
    assert runtime.name != "openvino-int8"
    (tmp_path / INT8_RECORD).unlink()  # no int8 model any more: the measurement made without one holds again
    assert runtime_choice.recorded_choice(onnx, sha) == before


MEASURE_ONCE = """
import json, sys, time
from pathlib import Path
from simengine.model import runtime_choice

log = Path(sys.argv[4])
measure = runtime_choice._measure
def counted(*args):
    with open(log, "a") as out:
        out.write("measured\\n")
    deadline = time.monotonic() + 60
    while log.read_text().count("arrived") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the other process is on its way in: without the lock it would measure too
    time.sleep(0.5)
    return measure(*args)
runtime_choice._measure = counted
runtime_choice.TIMED_ROUNDS = 1
with open(log, "a") as out:
    out.write("arrived\\n")
runtime, record = runtime_choice.choose_runtime(sys.argv[1], sys.argv[2], tuple(json.loads(sys.argv[3])))
print(json.dumps({"chosen": record["chosen"], "measured_at": record["measured_at"]}))
"""


def test_processes_that_start_together_measure_once(export, tmp_path):
    """The second process waits for the first one's measurement instead of timing the runtimes beside it."""
    import os
    import subprocess
    import sys

    path, sha, shape = export
    env = dict(os.environ, SIMENGINE_CACHE=str(tmp_path / "cache"))
    log = tmp_path / "measurements.log"
    script = tmp_path / "choose.py"
    script.write_text(MEASURE_ONCE)
    procs = [subprocess.Popen([sys.executable, str(script), str(path), sha, json.dumps(shape), str(log)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("measured") == 1
    assert outs[0] == outs[1]  # the same record, read by the process that waited
