"""The accuracy gate passes a runtime that computes what fp32 computes and fails one that does not."""

import numpy as np
import pytest

from simengine.errors import SimengineError
from simengine.model.encoder import Encoder
from simengine.model.runtime_gate import run_gate


class Scrambled:
    """fp32 features each moved to the next image in the batch: a runtime that is wrong, not noisy."""

    name, features_tag = "scrambled", "scrambled"

    def __init__(self, runtime):
        self.runtime = runtime

    def __call__(self, batch):
        out = self.runtime(batch)
        return np.roll(out, 1, axis=0)


def test_an_equal_runtime_passes_and_a_wrong_one_fails(model, val):
    fp32 = model.encoder
    encoders = {"onnxruntime": fp32, "scrambled": Encoder(fp32.identity, Scrambled(fp32.runtime), fp32.dim)}
    paths = [p for ps in val.values() for p in ps]
    labels = [name for name, ps in val.items() for _ in ps]
    rows = {r["runtime"]: r for r in run_gate(model, encoders, paths, labels, reference="onnxruntime", record=False)}
    assert rows["onnxruntime"]["passes_gate"] and rows["onnxruntime"]["largest_difference"] == 0
    assert not rows["scrambled"]["passes_gate"] and rows["scrambled"]["largest_difference"] > 0.1
    assert rows["scrambled"]["images"] == len(paths)


def test_the_gate_needs_two_classes(model, val):
    paths = val["coffee"]
    with pytest.raises(SimengineError, match="two classes"):
        run_gate(model, {"onnxruntime": model.encoder}, paths, ["coffee"] * len(paths), reference="onnxruntime")
