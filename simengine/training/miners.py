"""Triplet miners: given a batch of embeddings and labels, return (anchor, positive, negative) index tensors."""

from __future__ import annotations

import torch

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _distances_and_masks(embeddings: torch.Tensor, labels: torch.Tensor):
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(f"expected (N, D) embeddings and (N,) labels, got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
    dist = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return dist, same & ~eye, ~same


def _checked(a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, labels: torch.Tensor) -> Triplets:
    assert bool((labels[a] == labels[p]).all() and (a != p).all()), "positive of another class"
    assert bool((labels[a] != labels[n]).all()), "negative of the anchor's class"
    return a, p, n


@torch.no_grad()
def batch_hard(embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """For each anchor with a positive and a negative: its farthest positive and its nearest negative."""
    dist, pos, neg = _distances_and_masks(embeddings, labels)
    usable = pos.any(1) & neg.any(1)
    hardest_pos = dist.masked_fill(~pos, -1.0).argmax(1)
    hardest_neg = dist.masked_fill(~neg, float("inf")).argmin(1)
    a = usable.nonzero().squeeze(1)
    return _checked(a, hardest_pos[a], hardest_neg[a], labels)


@torch.no_grad()
def semihard(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> Triplets:
    """Every (anchor, positive) pair with the nearest negative farther than the positive but within the margin."""
    dist, pos, neg = _distances_and_masks(embeddings, labels)
    a, p = pos.nonzero(as_tuple=True)
    d_ap = dist[a, p][:, None]
    d_an = dist[a]
    window = neg[a] & (d_an > d_ap) & (d_an < d_ap + margin)
    keep = window.any(1)
    n = d_an.masked_fill(~window, float("inf")).argmin(1)
    return _checked(a[keep], p[keep], n[keep], labels)
