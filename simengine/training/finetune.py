"""Backbone fine-tuning on images with augmentation and batch-hard triplet loss (meant for a GPU; runs on CPU)."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simengine.files import sha256_file
from simengine.files import cache_dir
from simengine.data.folders import Item
from simengine.model.encoder import Encoder
from simengine.data.decode import load_rgb
from simengine.training.pk_sampler import PKSampler

log = logging.getLogger(__name__)


@dataclass
class FinetuneOptions:
    """Which blocks to unfreeze (-1: the whole backbone) and how long to train."""

    blocks: int = 2
    steps: int = 300
    lr: float = 1e-4
    classes_per_batch: int = 8
    per_class: int = 4
    margin: float = 0.2
    seed: int = 0
    device: str = "auto"


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def unfreeze_last_blocks(model, blocks: int) -> list:
    """Unfreeze the last `blocks` blocks and the head conv (everything when blocks < 0); return their parameters.

    Frozen parts stay in eval mode so that their BatchNorm statistics do not drift either.
    """
    if blocks < 0:
        model.train()
        return list(model.parameters())
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    flat = [b for stage in model.blocks for b in stage]
    trainable = flat[len(flat) - blocks:] + [model.conv_head, model.bn2]
    for module in trainable:
        module.train()
        for p in module.parameters():
            p.requires_grad = True
    return [p for m in trainable for p in m.parameters()]


def finetune_encoder(
    encoder: Encoder, items: list[Item], opts: FinetuneOptions, runtime: str = "auto", progress: bool = False
) -> tuple[Encoder, Path]:
    """Fine-tune a copy of the encoder's backbone; return the new encoder and its saved weights file."""
    import copy

    import timm.data
    import torch
    from safetensors.torch import save_file
    from torch.nn import functional as F

    from simengine.training import miners as miners

    device = pick_device(opts.device)
    log.info("fine-tuning on %s (%s)", device, "CUDA available" if device == "cuda" else "no CUDA device")
    torch.manual_seed(opts.seed)
    model = copy.deepcopy(encoder.torch_model).to(device)
    params = unfreeze_last_blocks(model, opts.blocks)
    projection = torch.nn.Linear(encoder.dim, 256).to(device)
    optimizer = torch.optim.AdamW(params + list(projection.parameters()), lr=opts.lr)
    augment = timm.data.create_transform(**encoder.identity["data_config"], is_training=True)
    labels = [i.label for i in items]
    codes = torch.from_numpy(np.unique(labels, return_inverse=True)[1])
    batches = iter(PKSampler(labels, opts.classes_per_batch, opts.per_class, opts.seed))
    from tqdm import tqdm

    for step in tqdm(range(opts.steps), desc="fine-tuning", disable=not progress):
        ix = next(batches)
        x = torch.stack([augment(load_rgb(items[i].path)) for i in ix]).to(device)
        y = codes[ix].to(device)
        emb = F.normalize(projection(model(x)), dim=-1)
        a, p, n = miners.batch_hard(emb, y)
        loss = F.triplet_margin_loss(emb[a], emb[p], emb[n], margin=opts.margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress and (step + 1) % 50 == 0:
            log.info("fine-tune step %d: loss %.4f", step + 1, float(loss))
    model = model.cpu().eval()
    for p in model.parameters():
        p.requires_grad = False
    folder = cache_dir() / "finetuned"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=folder)
    os.close(fd)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    sha = sha256_file(tmp)
    path = folder / f"{encoder.name}-{sha[:12]}.safetensors"
    os.replace(tmp, path)
    identity = dict(encoder.identity, weights_source="bundle:fine-tuned", weights_sha256=sha, weights_path=None)
    return Encoder.from_torch(identity, model, runtime), path
