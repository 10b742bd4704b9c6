"""The accuracy gate of a reduced-precision runtime: does it answer the three questions as fp32 does?

Every runtime embeds the same labelled images with the bundle's heads. The gate compares, against the fp32
reference runtime:
- retrieval among the images themselves, each left out of its own search (P@1 and MAP@R): an index built and
  queried on the runtime;
- retrieval of its queries in the reference's embeddings (`*_in_fp32_index`): an index built in fp32 and queried
  on the runtime, as after `--runtime auto` switches to it on an existing index;
- pair and triplet accuracy at the bundle's calibrated thresholds, on the same 10,000 balanced pairs and triplets.

With `twins` (a bundle's general twin, which shares its backbone), the same metrics of their heads on the same
features count too (`general_*`). A runtime passes when every one is within `runtime_choice.GATE_TOLERANCE` of the
reference; the verdict of a reduced
precision is recorded on this machine (`runtime_choice.record_gate`), so that `--runtime auto` may choose it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from simengine.evaluation.decisions import evaluate_decisions
from simengine.evaluation.metrics import retrieval_metrics
from simengine.model.bundle import Model
from simengine.model.encoder import Encoder
from simengine.model.runtime_choice import REDUCED, gate_verdict, record_gate

DECISION_SETS = 10_000


def run_gate(model: Model, encoders: dict[str, Encoder], paths: Sequence[str | os.PathLike], labels: Sequence[str],
             reference: str, record: bool = True, twins: Sequence[Model] = ()) -> list[dict[str, Any]]:
    """One row per runtime (its metrics, the largest difference from `reference`, passed or not); with `record`, the
    verdicts of reduced precisions are stored for `--runtime auto`."""
    embedded = {name: _features(model, encoder, paths) for name, encoder in encoders.items()}
    ok = set.intersection(*(set(found) for _, found in embedded.values()))  # the same files, for every runtime
    if len({label for i, label in enumerate(labels) if i in ok}) < 2:
        from simengine.errors import SimengineError

        raise SimengineError("the accuracy gate needs labelled images of at least two classes")
    rows_of = {name: [row for row, i in enumerate(found) if i in ok] for name, (_, found) in embedded.items()}
    y = [labels[i] for i in sorted(ok)]
    features = {name: x[rows_of[name]] for name, (x, _) in embedded.items()}
    metrics = {}
    for name in encoders:
        metrics[name] = _metrics(model, features[name], features[reference], y)
        for twin in twins:
            metrics[name] |= {f"general_{k}": v for k, v in
                              _metrics(twin, features[name], features[reference], y).items()}
    export = model.config["onnx"]["backbone"]["sha256"]
    rows = []
    for name, m in metrics.items():
        worst, passed = gate_verdict(metrics[reference], m)
        row = {"runtime": name, **m, "images": len(y), "largest_difference": worst, "passes_gate": passed}
        if record and name.endswith(REDUCED):  # for the model this encoder ran, whatever lies on disk now
            row["recorded"] = record_gate(encoders[name].runtime.model_sha256 or export, name, metrics[reference],
                                          m)["passed"]
        rows.append(row)
    return rows


def _features(model: Model, encoder: Encoder, paths: Sequence[str | os.PathLike]) -> tuple[np.ndarray, list[int]]:
    """Backbone features of the images that decode, and which those are."""
    result = encoder.embed_paths(paths, flip=model.flip)
    return result.vectors, result.ok


def _metrics(model: Model, features: np.ndarray, reference_features: np.ndarray, labels: list[str]
             ) -> dict[str, float]:
    emb, reference_emb = model.embed_features(features), model.embed_features(reference_features)
    within = retrieval_metrics(emb, labels, emb, labels, exclude_self=True)
    mixed = retrieval_metrics(emb, labels, reference_emb, labels, exclude_self=True)
    calibration = model.calibration
    decisions = evaluate_decisions(emb, labels, model.pair_logits, calibration, n=DECISION_SETS)[calibration.default]
    return {"precision_at_1": within["precision_at_1"], "map_at_r": within["map_at_r"],
            "precision_at_1_in_fp32_index": mixed["precision_at_1"], "map_at_r_in_fp32_index": mixed["map_at_r"],
            "pair_accuracy": decisions["pair_accuracy"], "triplet_accuracy": decisions["triplet_accuracy"]}
