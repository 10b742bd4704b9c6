"""`simengine train`: dataset -> cached features -> triplet embedding head + BCE pair head -> calibrated bundle."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simengine.model.bundle import save_bundle
from simengine.data.folders import Item, scan_split
from simengine.dedup.calibrate import SAME_PICTURE, calibrate_on_items, same_picture_file
from simengine.evaluation.decisions import calibrate_decisions, evaluate_decisions
from simengine.model.encoder import Encoder
from simengine.errors import SimengineError
from simengine.evaluation.metrics import retrieval_metrics
from simengine.training.classifier import imagenet_classifier
from simengine.model.feature_cache import FeatureCache
from simengine.model.general import CENTROIDS, GENERAL_DIR, centroids_file, training_centroids
from simengine.model.heads import embed_numpy, pair_logits
from simengine.training.fit import History, TrainOptions, split_holdout, train_heads

if TYPE_CHECKING:
    from simengine.training.finetune import FinetuneOptions

log = logging.getLogger(__name__)


def dataset_fingerprint(items: list[Item]) -> str:
    """sha256 over the sorted (split, class, file sha256) triples: the same data gives the same fingerprint."""
    digest = hashlib.sha256()
    for split, label, sha in sorted((i.split, i.label, i.sha256) for i in items):
        digest.update(f"{split}/{label}/{sha}\n".encode())
    return digest.hexdigest()


def adapt_backbone(x: np.ndarray, items: list[Item], held_out: set[str], finetune: bool | None) -> dict[str, Any]:
    """Whether to adapt the backbone before training the heads, and why: as `finetune` asks, else (None) where there
    are enough images and the frozen features' holdout precision@1 (against the other training images) is below
    `finetune.ADAPT_BELOW_P1`."""
    from simengine.training.finetune import ADAPT_BELOW_P1, MIN_ADAPT_IMAGES

    if finetune is not None:
        return {"adapt": finetune, "reason": "asked for" if finetune else "asked for frozen"}
    hold = np.array([i.sha256 in held_out for i in items])
    if (~hold).sum() < MIN_ADAPT_IMAGES or len({i.label for i in items}) < 2 or not hold.any():
        return {"adapt": False, "reason": f"fewer than {MIN_ADAPT_IMAGES} training images"}
    y = np.array([i.label for i in items])
    p1 = retrieval_metrics(x[hold], y[hold], x[~hold], y[~hold])["precision_at_1"]
    verdict = "below" if p1 < ADAPT_BELOW_P1 else "at or above"
    return {"adapt": bool(p1 < ADAPT_BELOW_P1), "frozen_holdout_p1": round(float(p1), 4),
            "reason": f"frozen features' holdout precision@1 {p1:.3f} {verdict} {ADAPT_BELOW_P1}"}


def labelled_features(cache: FeatureCache, items: list[Item], progress: bool) -> tuple[np.ndarray, list[Item]]:
    """Features of the items that decode, and those items; failures are logged and left out."""
    x, failed = cache.features([i.path for i in items], [i.sha256 for i in items], progress=progress)
    for _, path, reason in failed:
        log.warning("left out %s", reason)
    keep = np.flatnonzero(~np.isnan(x).any(axis=1))
    return x[keep], [items[i] for i in keep]


def train_model(
    data: str | os.PathLike,
    out: str | os.PathLike,
    opts: TrainOptions | None = None,
    backbone: str | None = None,
    weights: str | os.PathLike | None = None,
    finetune: "FinetuneOptions | None" = None,
    runtime: str = "auto",
    progress: bool = False,
) -> Path:
    """Train both heads on `data`'s train split, calibrate on its holdout, evaluate on val, and save a bundle.

    The backbone's last blocks adapt to the images first (with `finetune`'s options) where `opts.finetune` says so
    (see `adapt_backbone`)."""
    opts = opts or TrainOptions()
    started = time.time()
    data = Path(data)
    train_items = scan_split(data, "train")
    val_items = scan_split(data, "val") if (data / "val").is_dir() else []
    # Chosen before fine-tuning, so that the backbone never trains on the images that early-stop and calibrate the heads.
    held_out = {train_items[i].sha256 for i in split_holdout([i.label for i in train_items], opts.holdout, opts.seed)[1]}
    encoder = Encoder.load(backbone, weights, runtime)
    log.info("embedding runtime: %s", encoder.runtime.name)
    cache = FeatureCache(encoder, flip=opts.flip)
    x, train_items = labelled_features(cache, train_items, progress)
    choice = adapt_backbone(x, train_items, held_out, opts.finetune)
    finetuned = None
    if choice["adapt"]:
        from simengine.training.finetune import FinetuneOptions, finetune_encoder

        options = finetune or FinetuneOptions(seed=opts.seed)
        encoder, finetuned, choice["record"] = finetune_encoder(
            encoder, [i for i in train_items if i.sha256 not in held_out],
            [i for i in train_items if i.sha256 in held_out], options, runtime, progress)
        choice["adapted"] = finetuned is not None
        if finetuned is not None:
            cache = FeatureCache(encoder, flip=opts.flip)
            x, train_items = labelled_features(cache, train_items, progress)
    labels = [i.label for i in train_items]
    if len(set(labels)) < 3:
        raise SimengineError(f"{data}/train: training needs at least 3 classes")
    in_holdout = np.array([i.sha256 in held_out for i in train_items])
    fit, hold = np.flatnonzero(~in_holdout), np.flatnonzero(in_holdout)
    y = np.asarray(labels)
    classifier = imagenet_classifier(encoder.identity) if opts.posteriors else None
    embedding_head, pair_head, e_hist, p_hist = train_heads(x, y, fit, hold, opts, classifier, progress)
    emb = embed_numpy(embedding_head, x)
    logits = lambda a, b: pair_logits(pair_head, a, b)  # noqa: E731
    calibration = calibrate_decisions(emb[hold], y[hold], logits, source="training holdout", seed=opts.seed)
    metrics: dict[str, Any] = {"train_seconds": None}
    if val_items:
        xv, val_items = labelled_features(cache, val_items, progress)
        metrics["val"] = evaluate_embeddings(embed_numpy(embedding_head, xv), [i.label for i in val_items],
                                             emb, labels, logits, calibration, opts.seed)
    metrics["train_seconds"] = round(time.time() - started, 1)
    dataset = {"root": str(data.resolve()), "fingerprint": dataset_fingerprint(train_items + val_items),
               "classes": sorted(set(labels)), "train": len(train_items), "val": len(val_items)}
    holdout_sha256 = sorted(train_items[i].sha256 for i in hold)
    config = _bundle_config(encoder, embedding_head, pair_head, opts, choice, e_hist, p_hist, dataset,
                            holdout_sha256, calibration, metrics)
    extra = {"loss_curve.png": loss_curve_png(e_hist, p_hist),
             "metrics.json": json.dumps(metrics, indent=2).encode(),
             CENTROIDS: centroids_file(*training_centroids(x, y, hold)),
             SAME_PICTURE: _same_picture(encoder, train_items, x, hold, opts, data)}
    out = Path(out)
    # The twin is written first, beside the bundle, and moved inside it before the bundle's own atomic rename:
    # a bundle is complete with its twin, or not there.
    twin = _save_general_twin(out.parent / f".{out.name}.{GENERAL_DIR}", encoder, x, y, fit, hold, opts, choice,
                              finetuned, dataset, holdout_sha256, {SAME_PICTURE: extra[SAME_PICTURE]}, progress)
    try:
        path = save_bundle(out, config, embedding_head, pair_head, encoder, finetuned, extra, {GENERAL_DIR: twin})
    finally:
        shutil.rmtree(twin, ignore_errors=True)
    log.info("bundle written to %s in %.0f s", path, time.time() - started)
    if opts.int8:
        _int8_model(path, [train_items[i] for i in fit], val_items or [train_items[i] for i in hold], opts.seed,
                    progress)
    return path


def _int8_model(bundle: Path, calibration: list[Item], gate: list[Item], seed: int, progress: bool) -> None:
    """The bundle's int8 model, calibrated on training images the heads were fitted on and gated on labelled images
    none of that saw; a step that cannot run here (no NNCF, too few images) is said, not fatal."""
    import random

    from simengine.model.int8 import quantize_and_gate
    from simengine.model.quantize import CALIBRATION_IMAGES, MIN_CALIBRATION_IMAGES, int8_installed
    from simengine.model.runtime_choice import GATE_TOLERANCE

    if not int8_installed():
        log.warning("no int8 model: NNCF and OpenVINO are not installed (pip install nncf openvino)")
        return
    if len(calibration) < MIN_CALIBRATION_IMAGES:
        log.warning("no int8 model: %d training images, %d needed to calibrate it", len(calibration),
                    MIN_CALIBRATION_IMAGES)
        return
    started = time.time()
    sample = random.Random(seed).sample(calibration, min(CALIBRATION_IMAGES, len(calibration)))
    try:
        result = quantize_and_gate(bundle, [i.path for i in sample], [(i.path, i.label) for i in gate], progress)
    except Exception as exc:  # NNCF and OpenVINO fail in their own ways; the bundle is complete without int8
        log.warning("no int8 model: %s", exc)
        return
    int8 = next(row for row in result["gate"] if row["runtime"] == "openvino-int8")
    log.info("int8 model: gate %s on %d images (largest difference %.4f, tolerance %s) in %.0f s",
             "passed" if int8["passes_gate"] else "FAILED", int8["images"], int8["largest_difference"],
             GATE_TOLERANCE, time.time() - started)


def _same_picture(encoder: Encoder, train_items: list[Item], x: np.ndarray, hold: np.ndarray, opts: TrainOptions,
                  data: Path) -> bytes:
    """The `simengine dedup` decision (see `dedup.calibrate`): generated copies of holdout images against the most
    similar other training images of their classes."""
    decision, info = calibrate_on_items(encoder, train_items, x, opts.flip, originals_from=hold, seed=opts.seed)
    return same_picture_file(decision, info, f"{data}/train, originals from the training holdout")


def _bundle_config(encoder: Encoder, embedding_head, pair_head, opts: TrainOptions, backbone: dict, e_hist: History,
                   p_hist: History, dataset: dict, holdout_sha256: list[str], calibration, metrics: dict) -> dict:
    return {
        "encoder": encoder.identity,
        "heads": {
            "embedding": embedding_head.config(),
            "pair": {"dim": pair_head.dim, "hidden": pair_head.hidden, "input": "concat(a, b) -> [|a-b|, a*b]"},
        },
        "training": opts.to_dict() | {"backbone": backbone,
                                      "best_step": {"embedding": e_hist.best_step, "pair": p_hist.best_step}},
        "dataset": dataset,
        "holdout_sha256": holdout_sha256,
        "calibration": calibration.to_dict(),
        "metrics": metrics,
    }


def _save_general_twin(target: Path, encoder: Encoder, x: np.ndarray, y: np.ndarray, fit: np.ndarray,
                       hold: np.ndarray, opts: TrainOptions, backbone: dict, finetuned, dataset: dict,
                       holdout_sha256: list[str], extra: dict[str, bytes], progress: bool) -> Path:
    """The bundle's general twin (see `model.general`): the backbone's features as the embedding (an identity
    projection), a pair head trained on them, and thresholds on the cosine: those transfer to classes never seen
    (0.879 pair accuracy on unseen Imagenette halves, against 0.880 calibrated on them), learned ones do not.
    `extra` files go in too (the same-picture decision: it depends on the backbone alone, which the twin shares)."""
    import dataclasses

    import torch

    from simengine.model.heads import EmbeddingHead
    from simengine.training.fit import train_pair_head

    identity = EmbeddingHead(x.shape[1], x.shape[1], 0)
    with torch.no_grad():
        identity.net.weight.copy_(torch.eye(x.shape[1]))
        identity.net.bias.zero_()
    emb = embed_numpy(identity, x)
    pair_head, p_hist = train_pair_head(emb[fit], y[fit], emb[hold], y[hold], opts, progress)
    logits = lambda a, b: pair_logits(pair_head, a, b)  # noqa: E731
    calibration = calibrate_decisions(emb[hold], y[hold], logits, source="training holdout (general twin)",
                                      seed=opts.seed)
    calibration = dataclasses.replace(calibration, default="distance")
    config = _bundle_config(encoder, identity, pair_head, opts, backbone, History(), p_hist, dataset, holdout_sha256,
                            calibration, {}) | {"general": True}
    return save_bundle(target, config, identity, pair_head, encoder, finetuned, extra)


def evaluate_embeddings(
    val_emb: np.ndarray, val_labels: list[str], gallery_emb: np.ndarray, gallery_labels: list[str],
    logits, calibration, seed: int = 0, n: int = 10_000,
) -> dict[str, Any]:
    """Retrieval (val queries against the train gallery) and pair/triplet accuracy of every calibrated mode on val."""
    result: dict[str, Any] = retrieval_metrics(val_emb, val_labels, gallery_emb, gallery_labels)
    result["decisions"] = evaluate_decisions(val_emb, val_labels, logits, calibration, n=n, seed=seed + 1000)
    result["default_mode"] = calibration.default
    return result


def loss_curve_png(*histories: History) -> bytes:
    """Training loss (log scale) and holdout metric per step, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for history, name in zip(histories, ("embedding (triplet)", "pair head (BCE)")):
        steps, losses = zip(*history.loss)
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes[0].plot(steps[window - 1:], smooth, label=name)
        if history.holdout:
            s, v = zip(*history.holdout)
            axes[1].plot(s, v, marker="o", label=name)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].set(title="holdout: MAP@R (embedding), accuracy (pair head)", xlabel="step")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
