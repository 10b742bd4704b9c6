"""Batch samplers for metric learning."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np


class PKSampler:
    """Endless batches of P classes x K items each (items repeat within a class only when it has fewer than K)."""

    def __init__(self, labels: Sequence, p: int, k: int, seed: int = 0):
        groups = defaultdict(list)
        for i, label in enumerate(labels):
            groups[label].append(i)
        self.groups = [np.asarray(ix) for _, ix in sorted(groups.items(), key=lambda kv: str(kv[0]))]
        if len(self.groups) < 2:
            raise ValueError("PK sampling needs at least two classes")
        self.p, self.k = min(p, len(self.groups)), k
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            classes = self.rng.choice(len(self.groups), size=self.p, replace=False)
            yield np.concatenate([
                self.rng.choice(self.groups[c], size=self.k, replace=len(self.groups[c]) < self.k) for c in classes
            ])
