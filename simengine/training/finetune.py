"""Adapting the backbone's last blocks to a labelled collection, on a CPU.

The frozen early blocks run once per image and augmented view, and their activations are kept in memory; training
then runs only the last blocks, forward and backward, over those cached activations. On 2 cores that turns an
hour of full fine-tuning into minutes (benchmarks/results/adaptation.md).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simengine.data.decode import load_rgb
from simengine.data.folders import Item
from simengine.evaluation.metrics import retrieval_metrics
from simengine.files import cache_dir, sha256_file
from simengine.model.encoder import Encoder
from simengine.training.pk_sampler import PKSampler

log = logging.getLogger(__name__)

# `train_model` adapts the backbone, unless told otherwise, where the frozen features' holdout precision@1 is below
# ADAPT_BELOW_P1: there the backbone does not know the classes yet (TrashNet: 0.88, and adapting lifts its val pair
# accuracy by 0.07, benchmarks/results/adaptation.md). Above it (Imagenette: 0.97, either half of its classes: 0.99)
# heads on frozen features reach 0.98, and a fine-tuned backbone measured lower (accuracy_lite0_finetuned.md).
# Fewer than MIN_ADAPT_IMAGES training images are too few to adapt on and to stop early.
ADAPT_BELOW_P1 = 0.93
MIN_ADAPT_IMAGES = 300


@dataclass
class FinetuneOptions:
    """Which blocks train (the last `blocks` of the backbone's flat block list, plus its head convolution; -1: the
    whole backbone), how many augmented views of each image are cached, and the schedule."""

    blocks: int = 8
    views: int = 4
    epochs: int = 12
    patience: int = 3
    lr: float = 1e-3
    projection_lr: float = 1e-3
    weight_decay: float = 1e-4
    classes_per_batch: int = 8
    per_class: int = 6
    # "proxy": normalised softmax over one learned proxy per class (temperature `temperature`); "triplet":
    # batch-hard triplet loss with `margin`, which collapsed here (every distance equal, the loss stuck at the
    # margin, holdout MAP@R falling from the first epoch on TrashNet; benchmarks/results/adaptation.md).
    loss: str = "proxy"
    margin: float = 0.2
    temperature: float = 0.05
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class SplitBackbone:
    """A timm EfficientNet cut in two: the frozen `trunk` (stem and early blocks) and the trainable `top` (the last
    blocks, the head convolution and the pooling). The top's BatchNorm layers keep their ImageNet statistics (eval
    mode): batches of a few dozen cached views would make poor estimates of them, and the frozen trunk's
    activations they normalise do not move. Both halves run channels-last: with OpenVINO loaded in the same
    process (the embedding runtime), torch's default layout ran these convolutions at half the speed."""

    def __init__(self, model, blocks: int):
        import torch

        self.model = model.eval().to(memory_format=torch.channels_last)
        flat = [b for stage in model.blocks for b in stage]
        split = 0 if blocks < 0 or blocks >= len(flat) else len(flat) - blocks
        stem = [model.conv_stem, model.bn1]
        self.trunk = torch.nn.Sequential(*stem, *flat[:split]) if split else None
        self.top_modules = ([] if split else stem) + flat[split:] + [model.conv_head, model.bn2]
        for p in model.parameters():
            p.requires_grad = False
        for module in self.top_modules:
            for p in module.parameters():
                p.requires_grad = True

    def parameters(self) -> list:
        return [p for m in self.top_modules for p in m.parameters()]

    def early(self, x):
        """The cached activations of a preprocessed batch: the trunk's output (the batch itself without a trunk)."""
        import torch

        return self.trunk(x.contiguous(memory_format=torch.channels_last)) if self.trunk is not None else x

    def top(self, h):
        """Pooled features from the trunk's activations."""
        import torch

        h = h.contiguous(memory_format=torch.channels_last)
        for module in self.top_modules:
            h = module(h)
        return self.model.forward_head(h, pre_logits=True)


def view_transform(data_config: dict[str, Any]):
    """Augmentation for metric learning: a random crop of 30-100 % of the picture at the backbone's input size, a
    mirror, and mild colour jitter (colour tells materials apart, so it is only nudged)."""
    from torchvision import transforms

    size = data_config["input_size"][-1]
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.3, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(0.25, 0.25, 0.2, 0.02),
        transforms.ToTensor(),
        transforms.Normalize(data_config["mean"], data_config["std"]),
    ])


def trunk_runtime(split: SplitBackbone, input_shape: tuple[int, ...], folder: Path):
    """The frozen trunk as a function of NCHW float32 batches: ONNX Runtime over its export (checked against torch
    by the export), 3-4x torch's speed here; torch where there is no trunk to export or the export fails."""
    import torch

    from simengine.model.runtimes import OnnxRuntime, export_onnx

    if split.trunk is not None:
        try:
            export_onnx(split.trunk.to(memory_format=torch.contiguous_format), folder / "trunk.onnx", input_shape)
            return OnnxRuntime(folder / "trunk.onnx")
        except Exception as exc:  # the exporter fails in its own ways; torch computes the same, slower
            log.warning("the frozen blocks run in torch (ONNX export failed: %s)", exc)

    def torch_trunk(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return split.early(torch.from_numpy(batch)).float().numpy()

    return torch_trunk


def cache_activations(encoder: Encoder, split: SplitBackbone, items: list[Item], views: int,
                      progress: bool = False, batch: int = 32):
    """(N, 1 + views, C, H, W) float16 activations of the trunk: view 0 is the image as the encoder preprocesses it
    for embedding, the others are augmented. Each file is decoded once."""
    import torch
    from tqdm import tqdm

    augment = view_transform(encoder.identity["data_config"])
    side = encoder.preprocess.resize_side
    out = None
    pending: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as folder:
        trunk = trunk_runtime(split, tuple(encoder.identity["data_config"]["input_size"]), Path(folder))

        def flush(upto: int) -> None:
            nonlocal out
            h = torch.from_numpy(trunk(np.stack(pending))).half()
            if out is None:
                out = torch.empty((len(items), 1 + views) + tuple(h.shape[1:]), dtype=torch.float16)
            out.view(-1, *h.shape[1:])[upto - len(pending):upto] = h
            pending.clear()

        done = 0
        for item in tqdm(items, desc="caching early-block activations", disable=not progress):
            picture = load_rgb(item.path, draft_size=(side, side))
            pending.append(encoder.preprocess(picture))
            pending.extend(augment(picture).numpy() for _ in range(views))
            done += 1 + views
            if len(pending) >= batch:
                flush(done)
        if pending:
            flush(done)
    return out


def finetune_encoder(encoder: Encoder, items: list[Item], held_out: list[Item], opts: FinetuneOptions,
                     runtime: str = "auto", progress: bool = False) -> tuple[Encoder, Path | None, dict[str, Any]]:
    """Adapt a copy of the encoder's last blocks to `items` (a metric-learning loss on a projection of the pooled
    features, see `FinetuneOptions.loss`; warm-up then cosine learning rate), early-stopped on the MAP@R of
    `held_out` against `items`; return the new encoder, its saved weights file, and what happened (epochs, seconds,
    MAP@R per epoch). Where no epoch beat the frozen backbone on the holdout, that is what comes back: `encoder`
    itself, and no weights file."""
    import torch
    from torch.nn import functional as F
    from tqdm import tqdm

    from simengine.training import miners

    started = time.time()
    device = pick_device(opts.device)
    log.info("adapting the backbone's last %s blocks on %s", opts.blocks if opts.blocks >= 0 else "(all)", device)
    torch.manual_seed(opts.seed)
    model = copy.deepcopy(encoder.torch_model).to(device)
    split = SplitBackbone(model, opts.blocks)
    everything = items + held_out
    cached = cache_activations(encoder, split, everything, opts.views, progress)
    cache_s, cache_mb = time.time() - started, cached.numel() * cached.element_size() / 2**20
    log.info("cached %d views of %d images in %.0f s (%.0f MB)", cached.shape[0] * cached.shape[1], len(everything),
             cache_s, cache_mb)
    fit_rows, hold_rows = np.arange(len(items)), np.arange(len(items), len(everything))
    labels = [i.label for i in everything]
    codes = torch.from_numpy(np.unique(labels, return_inverse=True)[1])
    projection = torch.nn.Linear(encoder.dim, 256).to(device)
    proxies = torch.nn.Parameter(torch.randn(int(codes.max()) + 1, 256, device=device) / 16)
    optimizer = torch.optim.AdamW([{"params": split.parameters(), "lr": opts.lr},
                                   {"params": [*projection.parameters(), proxies], "lr": opts.projection_lr}],
                                  weight_decay=opts.weight_decay)
    sampler = PKSampler([labels[i] for i in fit_rows], opts.classes_per_batch, opts.per_class, opts.seed)
    steps_per_epoch = max(1, len(items) // (sampler.p * sampler.k))
    total = steps_per_epoch * opts.epochs
    warmup = steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def plain_features(rows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([split.top(cached[rows[s:s + 128], 0].float().to(device)).cpu().numpy()
                                   for s in range(0, len(rows), 128)])

    def holdout_map() -> float:
        fit, hold = plain_features(fit_rows), plain_features(hold_rows)
        return retrieval_metrics(hold, [labels[i] for i in hold_rows], fit, [labels[i] for i in fit_rows])["map_at_r"]

    history = [round(holdout_map(), 4)]
    log.info("frozen backbone: holdout MAP@R %.4f", history[0])
    best_state, best_epoch, stale = copy.deepcopy([m.state_dict() for m in split.top_modules]), 0, 0
    batches = iter(sampler)
    rng = np.random.default_rng(opts.seed)
    for epoch in tqdm(range(1, opts.epochs + 1), desc="adapting the backbone", disable=not progress):
        for _ in range(steps_per_epoch):
            ix = np.asarray(next(batches))
            views = rng.integers(1, cached.shape[1], len(ix)) if cached.shape[1] > 1 else np.zeros(len(ix), int)
            h = cached[torch.from_numpy(ix), torch.from_numpy(views)].float().to(device)
            emb = F.normalize(projection(split.top(h)), dim=-1)
            y = codes[ix].to(device)
            if opts.loss == "proxy":
                loss = F.cross_entropy(emb @ F.normalize(proxies, dim=-1).T / opts.temperature, y)
            else:
                a, p, n = miners.batch_hard(emb, y)
                loss = F.triplet_margin_loss(emb[a], emb[p], emb[n], margin=opts.margin)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        history.append(round(holdout_map(), 4))
        log.info("adaptation epoch %d: loss %.4f, holdout MAP@R %.4f", epoch, loss.item(), history[-1])
        if history[-1] > history[best_epoch]:
            best_state, best_epoch, stale = copy.deepcopy([m.state_dict() for m in split.top_modules]), epoch, 0
        else:
            stale += 1
            if stale >= opts.patience:
                break
    record = {"options": opts.to_dict(), "device": device, "images": len(items), "holdout_images": len(held_out),
              "cached_views": int(cached.shape[1]), "cache_mb": round(cache_mb, 1),
              "cache_seconds": round(cache_s, 1), "seconds": round(time.time() - started, 1),
              "holdout_map_at_r": history, "best_epoch": best_epoch}
    if best_epoch == 0:
        log.warning("adapting did not improve the holdout's MAP@R (%.4f frozen): the backbone stays frozen", history[0])
        return encoder, None, record
    for module, state in zip(split.top_modules, best_state):
        module.load_state_dict(state)
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    for p in model.parameters():
        p.requires_grad = False
    path, sha = _save_weights(model, encoder.name)
    identity = dict(encoder.identity, weights_source="bundle:fine-tuned", weights_sha256=sha, weights_path=None)
    return Encoder.from_torch(identity, model, runtime), path, record


def _save_weights(model, name: str) -> tuple[Path, str]:
    """The adapted backbone's weights in the cache, named by their sha256 (written atomically)."""
    from safetensors.torch import save_file

    folder = cache_dir() / "finetuned"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=folder)
    os.close(fd)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    sha = sha256_file(tmp)
    path = folder / f"{name}-{sha[:12]}.safetensors"
    os.replace(tmp, path)
    return path, sha
