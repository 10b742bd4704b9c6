"""Embeddings folders of the fixture model made of synthetic vectors: labelled clusters, large enough for IVF."""

from pathlib import Path

import numpy as np

from simengine.data.folders import Item
from simengine.shards.layout import write_collection
from simengine.shards.worker import model_identity

CLASSES = 12
PER_SHARD = 3_000


def clustered(model, tmp_path: Path, shards: int = 4, seed: int = 0) -> Path:
    """An embeddings folder of the model: labelled clusters of unit vectors, with a metadata column."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, model.dim)).astype(np.float32)

    def make():
        for k in range(shards):
            labels = rng.integers(0, CLASSES, PER_SHARD)
            vectors = centres[labels] + rng.normal(0, 0.09, (PER_SHARD, model.dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            yield vectors, [Item(Path(f"/photos/{k}/{i}.jpg"), f"class{label}", None, f"{k:032x}{i:032x}",
                                 {"camera": f"cam{i % 3}"}) for i, label in enumerate(labels)]

    out = tmp_path / "embeddings"
    write_collection(out, model_identity(model), make(), labels="table")
    return out


def all_vectors(embeddings: Path) -> np.ndarray:
    return np.concatenate([np.load(embeddings / "img_emb" / f"img_emb_{k}.npy") for k in range(4)])
