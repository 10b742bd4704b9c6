"""Training the heads on cached backbone features: triplet loss with mining, then a BCE pair head."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from simengine.training import miners as miners
from simengine.training.distill import similarity_distillation, teacher_features
from simengine.errors import SimengineError
from simengine.evaluation.metrics import retrieval_metrics
from simengine.model.heads import EmbeddingHead, PairHead, embed_numpy, pair_logits
from simengine.data.evalsets import sample_pairs, sample_training_triplets
from simengine.training.pk_sampler import PKSampler

log = logging.getLogger(__name__)

MINING = ("random", "semihard", "batch-hard")


@dataclass
class TrainOptions:
    """Head-training options; the defaults are the settings that measured best on Imagenette (see the README)."""

    mining: str = "batch-hard"
    margin: float = 0.2
    dim: int = 256
    hidden: int = 0
    steps: int = 1500
    lr: float = 1e-3
    weight_decay: float = 1e-4
    classes_per_batch: int = 10
    per_class: int = 8
    random_triplets: int = 1280
    # Join the backbone's ImageNet posteriors to the trained projection (see EmbeddingHead), the projection taking
    # `head_weight` of the cosine. Off by default (benchmarks/results/unseen_classes.md): at 0.7 it lifts unseen
    # Imagenette classes from 0.708 to 0.838 pair accuracy, still below the raw backbone's 0.880, flattered (they are
    # ImageNet classes: 0.768 without their outputs), for 0.002 of Imagenette's P@1 and 5x larger vectors.
    posteriors: bool = False
    head_weight: float = 0.7
    # Weight of similarity distillation (keep the backbone's batch cosines); measured, off by default: it costs the
    # training classes more than it gives others.
    distill: float = 0.0
    eval_every: int = 100
    patience: int = 4
    pair_hidden: int = 128
    pair_steps: int = 1500
    pair_batch: int = 256
    holdout: float = 0.1
    flip: bool = False
    seed: int = 0
    # Make the int8 model (NNCF) of the backbone and gate it on val (else the holdout), when nncf and openvino are
    # installed: `--runtime auto` runs it where it passes the gate and measures fastest.
    int8: bool = True
    # Adapt the backbone's last blocks before training the heads: True, False (frozen), or None: where the frozen
    # features tell the classes apart poorly (training.pipeline.adapt_backbone).
    finetune: bool | None = None

    def __post_init__(self):
        if self.mining not in MINING:
            raise ValueError(f"mining must be one of {', '.join(MINING)}, not {self.mining!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    """Per-step training loss and periodic holdout metrics of one head."""

    loss: list[tuple[int, float]] = field(default_factory=list)
    holdout: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0


def split_holdout(labels: Sequence, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, holdout) index arrays; the holdout is used for early stopping and calibration.

    Each class gives at least 2 items to the holdout (so same-class pairs can be drawn) and keeps 2 or more for fitting.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    hold = []
    for label in np.unique(labels):
        ix = rng.permutation(np.flatnonzero(labels == label))
        if len(ix) < 4:
            raise SimengineError(f"class {label!r} has {len(ix)} training images; at least 4 are needed")
        hold.extend(ix[: min(len(ix) - 2, max(2, int(round(fraction * len(ix)))))])
    mask = np.zeros(len(labels), bool)
    mask[hold] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def encode_labels(labels: Sequence) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1]


def _train_loop(
    module: torch.nn.Module, steps: int, lr: float, weight_decay: float, eval_every: int, patience: int,
    step_loss: Callable[[int], torch.Tensor], evaluate: Callable[[], float], name: str, progress: bool,
) -> History:
    """Adam with cosine decay; keep the weights with the best holdout score, stop after `patience` evals without gain."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = History()
    best, best_state, stale = -np.inf, None, 0
    for step in range(1, steps + 1):
        module.train()
        loss = step_loss(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        history.loss.append((step, loss.item()))
        if step % eval_every == 0 or step == steps:
            score = evaluate()
            history.holdout.append((step, score))
            if progress:
                log.info("%s step %d: loss %.4f, holdout %.4f", name, step, loss.item(), score)
            if score > best:
                best, stale, history.best_step = score, 0, step
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
                if stale >= patience:
                    break
    module.load_state_dict(best_state)
    module.eval()
    return history


def train_embedding_head(
    fit_x: np.ndarray, fit_y: Sequence, hold_x: np.ndarray, hold_y: Sequence, opts: TrainOptions,
    progress: bool = False, classifier: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[EmbeddingHead, History]:
    """Triplet-margin training with the chosen mining; early-stopped on holdout MAP@R against the fit gallery.

    With the backbone's ImageNet `classifier` (and `opts.posteriors`), the embedding joins its posteriors to the
    projection (see `EmbeddingHead`); the loss trains the projection alone, early stopping scores the joined one."""
    torch.manual_seed(opts.seed)
    head = EmbeddingHead(fit_x.shape[1], opts.dim, opts.hidden, classifier if opts.posteriors else None,
                         opts.head_weight)
    x = torch.from_numpy(np.ascontiguousarray(fit_x, np.float32))
    y = torch.from_numpy(encode_labels(fit_y))
    teacher = teacher_features(fit_x, fit_x.mean(0)) if opts.distill else None

    def distilled(loss: torch.Tensor, e: torch.Tensor, ix: torch.Tensor) -> torch.Tensor:
        return loss + opts.distill * similarity_distillation(e, teacher[ix]) if opts.distill else loss

    if opts.mining == "random":
        fixed = torch.tensor([s.indices for s in sample_training_triplets(list(fit_y), opts.random_triplets, opts.seed)])
        rng = np.random.default_rng(opts.seed)
        batch = opts.classes_per_batch * opts.per_class

        def step_loss(step: int) -> torch.Tensor:
            rows = fixed[rng.choice(len(fixed), size=min(batch, len(fixed)), replace=False)]
            e = head.project(x[rows.flatten()])
            t = e.view(len(rows), 3, -1)
            return distilled(F.triplet_margin_loss(t[:, 0], t[:, 1], t[:, 2], margin=opts.margin), e, rows.flatten())
    else:
        batches = iter(PKSampler(list(fit_y), opts.classes_per_batch, opts.per_class, opts.seed))

        def step_loss(step: int) -> torch.Tensor:
            ix = torch.from_numpy(next(batches))
            e, labels = head.project(x[ix]), y[ix]
            if opts.mining == "batch-hard":
                a, p, n = miners.batch_hard(e, labels)
            else:
                a, p, n = miners.semihard(e, labels, opts.margin)
            triplet = F.triplet_margin_loss(e[a], e[p], e[n], margin=opts.margin) if len(a) else e.sum() * 0.0
            return distilled(triplet, e, ix)

    def evaluate() -> float:
        return retrieval_metrics(embed_numpy(head, hold_x), hold_y, embed_numpy(head, fit_x), fit_y)["map_at_r"]

    history = _train_loop(head, opts.steps, opts.lr, opts.weight_decay, opts.eval_every, opts.patience,
                          step_loss, evaluate, f"embedding/{opts.mining}", progress)
    return head, history


def train_pair_head(
    fit_e: np.ndarray, fit_y: Sequence, hold_e: np.ndarray, hold_y: Sequence, opts: TrainOptions,
    progress: bool = False,
) -> tuple[PairHead, History]:
    """BCE on balanced pairs drawn afresh each step; early-stopped on holdout pair accuracy at p = 0.5."""
    torch.manual_seed(opts.seed)
    head = PairHead(fit_e.shape[1], opts.pair_hidden)
    e = torch.from_numpy(np.ascontiguousarray(fit_e, np.float32))
    fit_labels = list(fit_y)
    hold_pairs = sample_pairs(list(hold_y), 4000, seed=opts.seed + 1)
    hold_a = hold_e[[s.indices[0] for s in hold_pairs]]
    hold_b = hold_e[[s.indices[1] for s in hold_pairs]]
    hold_t = np.array([s.label for s in hold_pairs])

    def step_loss(step: int) -> torch.Tensor:
        pairs = sample_pairs(fit_labels, opts.pair_batch, seed=opts.seed * 100_003 + step)
        ix = torch.tensor([s.indices for s in pairs])
        target = torch.tensor([float(s.label) for s in pairs])
        # Both orders, so the head learns a symmetric function.
        both = torch.cat([torch.cat([e[ix[:, 0]], e[ix[:, 1]]], 1), torch.cat([e[ix[:, 1]], e[ix[:, 0]]], 1)])
        return F.binary_cross_entropy_with_logits(head(both), target.repeat(2))

    def evaluate() -> float:
        return float(((pair_logits(head, hold_a, hold_b) >= 0) == hold_t).mean())

    history = _train_loop(head, opts.pair_steps, opts.lr, opts.weight_decay, opts.eval_every, opts.patience,
                          step_loss, evaluate, "pair head", progress)
    return head, history


def train_heads(
    x: np.ndarray, y: np.ndarray, fit: np.ndarray, hold: np.ndarray, opts: TrainOptions,
    classifier: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = False,
) -> tuple[EmbeddingHead, PairHead, History, History]:
    """Both heads of a model on features `x`: the embedding head on the `fit` rows, early-stopped on the `hold` rows,
    then the pair head on the embeddings of the same rows."""
    embedding_head, e_hist = train_embedding_head(x[fit], y[fit], x[hold], y[hold], opts, progress, classifier)
    emb = embed_numpy(embedding_head, x)
    pair_head, p_hist = train_pair_head(emb[fit], y[fit], emb[hold], y[hold], opts, progress)
    return embedding_head, pair_head, e_hist, p_hist
