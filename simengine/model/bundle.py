"""Model bundles: one directory holding the encoder's identity, the heads, their ONNX exports and the calibration."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from simengine.files import sha256_file
from simengine.evaluation.decisions import Calibration
from simengine.model.encoder import EmbedResult, Encoder
from simengine.errors import BundleError, IndexUnusableError
from simengine.model.runtimes import OnnxRuntime, onnxruntime_version

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG = "config.json"
HEADS = "heads.safetensors"
BACKBONE = "backbone.safetensors"  # present only when the backbone was fine-tuned
ONNX_FILES = {"backbone": "backbone.onnx", "embedding": "embedding_head.onnx", "pair": "pair_head.onnx"}
BEHAVIOUR_KEYS = ("encoder", "heads", "calibration")


def bundle_hash(path: Path) -> str:
    """sha256 over what decides the model's outputs: encoder identity, head shapes, calibration, weight files."""
    config = json.loads((path / CONFIG).read_text())
    digest = hashlib.sha256(json.dumps({k: config.get(k) for k in BEHAVIOUR_KEYS}, sort_keys=True).encode())
    for name in (HEADS, BACKBONE):
        if (path / name).is_file():
            digest.update(name.encode() + bytes.fromhex(sha256_file(path / name)))
    return digest.hexdigest()


def save_bundle(out: str | os.PathLike, config: dict[str, Any], embedding_head, pair_head,
                encoder: Encoder, finetuned_backbone: Path | None = None, extra_files: dict[str, bytes] | None = None,
                extra_dirs: dict[str, Path] | None = None) -> Path:
    """Write a bundle atomically (temp dir, then rename), with ONNX exports when onnxruntime is installed;
    `extra_dirs` (name: a finished folder, such as the general twin) are moved inside before the rename."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is an ordinary, shareable directory
    try:
        tensors = {f"embedding.{k}": v.contiguous() for k, v in embedding_head.state_dict().items()}
        tensors |= {f"pair.{k}": v.contiguous() for k, v in pair_head.state_dict().items()}
        save_file(tensors, str(tmp / HEADS))
        if finetuned_backbone is not None:
            shutil.copyfile(finetuned_backbone, tmp / BACKBONE)
        config = dict(config, format_version=FORMAT_VERSION, heads_sha256=sha256_file(tmp / HEADS))
        if onnxruntime_version() is not None:
            config["onnx"] = _export_all(tmp, encoder, embedding_head, pair_head)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        for name, folder in (extra_dirs or {}).items():
            os.replace(folder, tmp / name)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=_jsonable))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _export_all(folder: Path, encoder: Encoder, embedding_head, pair_head) -> dict[str, Any]:
    from simengine.model.encoder import ensure_onnx
    from simengine.model.runtimes import export_onnx

    records = {"backbone": ensure_onnx(encoder.torch_model, encoder.identity, folder / ONNX_FILES["backbone"])}
    records["embedding"] = export_onnx(embedding_head, folder / ONNX_FILES["embedding"], (embedding_head.in_dim,))
    records["pair"] = export_onnx(pair_head, folder / ONNX_FILES["pair"], (2 * pair_head.dim,))
    return records


@dataclass
class Model:
    """A loaded bundle: the encoder and both heads on one runtime, with the bundle's config and calibration."""

    path: Path
    config: dict[str, Any]
    hash: str
    encoder: Encoder
    embed_features: Callable[[np.ndarray], np.ndarray]
    pair_logits: Callable[[np.ndarray, np.ndarray], np.ndarray]
    runtime: str

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_dict(self.config["calibration"])

    @property
    def flip(self) -> bool:
        return bool(self.config["training"].get("flip", False))

    def embed_paths(self, paths: Sequence[str | os.PathLike], progress: bool = False) -> EmbedResult:
        """Embeddings (L2-normalised) of image files; failures are reported, not raised."""
        result = self.encoder.embed_paths(paths, flip=self.flip, progress=progress)
        result.vectors = self.embed_features(result.vectors) if len(result.ok) else np.zeros((0, self.dim), np.float32)
        return result

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of a preprocessed NCHW batch (rows made by `encoder.load_image`)."""
        return self.embed_features(self.encoder.forward(batch, flip=self.flip))

    @property
    def dim(self) -> int:
        return int(self.config["heads"]["embedding"]["dim"])


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The bundle's config, checked for format version and the heads' hash."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise BundleError(f"{path}: not a model bundle (no {CONFIG})")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path / CONFIG}: corrupt ({exc})") from exc
    if config.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {config.get('format_version')!r}, this simengine reads {FORMAT_VERSION}")
    if not (path / HEADS).is_file() or sha256_file(path / HEADS) != config.get("heads_sha256"):
        raise BundleError(f"{path / HEADS}: missing or corrupt (hash does not match the config)")
    return config


def load_bundle(path: str | os.PathLike, runtime: str = "auto") -> Model:
    """Load a bundle on its ONNX exports when they are present and current (the backbone on the runtime asked for;
    "auto": the fastest measured here, see `runtime_choice`), else on torch (and say so)."""
    path = Path(path)
    config = read_config(path)
    if runtime != "torch":
        stale = stale_exports(path, config)
        if not stale:
            return _load_onnx(path, config, runtime)
        if runtime != "auto":
            raise BundleError(f"{path}: ONNX exports unusable: {stale}")
        log.warning("%s: ONNX exports unusable (%s); falling back to torch", path, stale)
    return _load_torch(path, config)


def stale_exports(path: Path, config: dict[str, Any]) -> str:
    """Why the bundle's ONNX files cannot be used, or '' when they can (then `load_bundle` runs torch)."""
    if onnxruntime_version() is None:
        return "onnxruntime is not installed"
    records = config.get("onnx")
    if not records:
        return "the bundle has no exports"
    for key, name in ONNX_FILES.items():
        record = records.get(key, {})
        if not (path / name).is_file():
            return f"{name} is missing"
        if sha256_file(path / name) != record.get("sha256"):
            return f"{name} does not match its recorded hash"
    if records["backbone"].get("weights_sha256") != config["encoder"]["weights_sha256"]:
        return "backbone.onnx was exported from other weights"
    return ""


def _load_onnx(path: Path, config: dict[str, Any], runtime: str) -> Model:
    from simengine.model.encoder import backbone_runtime

    heads = config["heads"]
    backbone, choice = backbone_runtime(path / ONNX_FILES["backbone"], config["onnx"]["backbone"]["sha256"],
                                        tuple(config["encoder"]["data_config"]["input_size"]), runtime)
    encoder = Encoder(config["encoder"], backbone, heads["embedding"]["in_dim"], runtime_choice=choice)
    embed = OnnxRuntime(path / ONNX_FILES["embedding"], threads=1)
    pair = OnnxRuntime(path / ONNX_FILES["pair"], threads=1)
    return Model(path, config, bundle_hash(path), encoder, embed,
                 lambda a, b: pair(np.concatenate([a, b], axis=1)), backbone.name)


def build_heads(config: dict[str, Any], state: dict):
    """Heads of the shapes in `config`, loaded strictly from a flat `embedding.*` / `pair.*` state dict."""
    from simengine.model.heads import EmbeddingHead, PairHead

    shapes = config["heads"]
    embedding = EmbeddingHead.from_config(shapes["embedding"])
    pair = PairHead(shapes["pair"]["dim"], shapes["pair"]["hidden"])
    for prefix, module in (("embedding.", embedding), ("pair.", pair)):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        module.eval()
    return embedding, pair


def _load_torch(path: Path, config: dict[str, Any]) -> Model:
    from safetensors.torch import load_file

    from simengine.model.backbones import create_backbone, weights_for_identity
    from simengine.model.heads import embed_numpy, pair_logits

    identity = config["encoder"]
    try:
        embedding, pair = build_heads(config, load_file(str(path / HEADS)))
    except (RuntimeError, KeyError) as exc:
        raise BundleError(f"{path}: heads do not match the config ({exc})") from exc
    if (path / BACKBONE).is_file():
        from simengine.model.backbones import WeightsRef

        weights = WeightsRef(path / BACKBONE, sha256_file(path / BACKBONE), "bundle:fine-tuned")
    else:
        weights = weights_for_identity(identity)
    if weights.sha256 != identity["weights_sha256"]:
        raise BundleError(f"{path}: backbone weights {weights.sha256[:12]} differ from the bundle's "
                          f"{identity['weights_sha256'][:12]}")
    encoder = Encoder.from_torch(identity, create_backbone(identity["backbone"], weights), runtime="torch")
    return Model(path, config, bundle_hash(path), encoder, lambda x: embed_numpy(embedding, x),
                 lambda a, b: pair_logits(pair, a, b), "torch")


def require_same_encoder(a: dict[str, Any], b: dict[str, Any], what: str) -> None:
    """Raise when two encoder identities differ in backbone or weights."""
    for key in ("backbone", "weights_sha256"):
        if a.get(key) != b.get(key):
            raise IndexUnusableError(f"{what}: built with {key}={a.get(key)!r}, the model has {b.get(key)!r}")
