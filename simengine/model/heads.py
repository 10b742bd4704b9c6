"""The trainable heads on backbone features: an L2-normalised embedding head and a Siamese pair head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class EmbeddingHead(nn.Module):
    """Backbone features -> L2-normalised embedding; linear, or an MLP when `hidden` is set."""

    def __init__(self, in_dim: int, dim: int = 256, hidden: int = 0):
        super().__init__()
        self.in_dim, self.dim, self.hidden = in_dim, dim, hidden
        if hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))
        else:
            self.net = nn.Linear(in_dim, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=-1)


class PairHead(nn.Module):
    """Two embeddings, concatenated as one (N, 2*dim) input -> same-class logit, from [|a-b|, a*b]."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        a, b = pair[:, : self.dim], pair[:, self.dim:]
        return self.net(torch.cat([(a - b).abs(), a * b], dim=-1)).squeeze(-1)


def embed_numpy(head: EmbeddingHead, features: np.ndarray) -> np.ndarray:
    head.eval()
    with torch.inference_mode():
        return head(torch.from_numpy(np.ascontiguousarray(features, np.float32))).numpy()


def pair_logits(head: PairHead, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    head.eval()
    with torch.inference_mode():
        return head(torch.from_numpy(np.concatenate([a, b], axis=1).astype(np.float32))).numpy()
