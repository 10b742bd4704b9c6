"""Adapting the backbone's last blocks over cached early-block activations (training.finetune), and when training
does it (training.pipeline.adapt_backbone)."""

import copy
import json

import numpy as np
import pytest
import torch

from simengine.data.decode import load_rgb
from simengine.data.folders import Item, scan_split
from simengine.training.finetune import FinetuneOptions, SplitBackbone, cache_activations, finetune_encoder
from simengine.training.pipeline import adapt_backbone

QUICK = dict(views=1, epochs=1, classes_per_batch=2, per_class=2, device="cpu")


def test_the_two_halves_compute_the_whole_backbone(encoder):
    split = SplitBackbone(copy.deepcopy(encoder.torch_model), blocks=5)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        whole = encoder.torch_model.eval()(x)
        halves = split.top(split.early(x))
    assert torch.allclose(whole, halves, atol=1e-4)
    trainable = {id(p) for p in split.parameters()}
    assert trainable and all(p.requires_grad == (id(p) in trainable) for p in split.model.parameters())


def test_cached_view_zero_is_the_image_as_embedded(encoder, fixture_data):
    items = scan_split(fixture_data, "train")[:3]
    split = SplitBackbone(copy.deepcopy(encoder.torch_model), blocks=2)
    cached = cache_activations(encoder, split, items, views=2)
    assert cached.shape[:2] == (3, 3) and cached.dtype == torch.float16
    picture = load_rgb(items[1].path, draft_size=(encoder.preprocess.resize_side,) * 2)
    with torch.no_grad():
        expected = split.early(torch.from_numpy(encoder.preprocess(picture))[None])[0]
    assert torch.allclose(cached[1, 0].float(), expected, atol=0.02 * float(expected.abs().max()))
    assert not torch.allclose(cached[1, 1].float(), cached[1, 0].float(), atol=1e-2)  # an augmented view


@pytest.fixture
def improving_holdout(monkeypatch):
    """The holdout's MAP@R rises every time it is measured, so that early stopping keeps the last epoch."""
    import simengine.training.finetune

    calls = iter(range(1000))
    monkeypatch.setattr(simengine.training.finetune, "retrieval_metrics",
                        lambda *args, **kwargs: {"map_at_r": next(calls) / 1000})


def test_only_the_last_blocks_change_and_the_original_stays(encoder, fixture_data, improving_holdout):
    items = scan_split(fixture_data, "train")
    before = {k: v.clone() for k, v in encoder.torch_model.state_dict().items()}
    tuned, weights_file, record = finetune_encoder(encoder, items[:-4], items[-4:],
                                                   FinetuneOptions(blocks=1, **QUICK), runtime="torch")
    after = tuned.torch_model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith(("blocks.6", "conv_head", "bn2")) for k in changed)
    assert tuned.identity["weights_sha256"] != encoder.identity["weights_sha256"] and weights_file.is_file()
    assert all(torch.equal(before[k], v) for k, v in encoder.torch_model.state_dict().items())
    assert record["images"] == len(items) - 4 and record["holdout_images"] == 4
    assert len(record["holdout_map_at_r"]) == 2 and record["cached_views"] == 2  # epoch 0 (frozen) and 1


def test_an_adaptation_that_never_beats_the_frozen_backbone_gives_it_back(encoder, fixture_data, monkeypatch):
    import simengine.training.finetune

    monkeypatch.setattr(simengine.training.finetune, "retrieval_metrics", lambda *args, **kwargs: {"map_at_r": 0.5})
    items = scan_split(fixture_data, "train")
    tuned, weights_file, record = finetune_encoder(encoder, items[:-4], items[-4:],
                                                   FinetuneOptions(blocks=1, **QUICK), runtime="torch")
    assert tuned is encoder and weights_file is None and record["best_epoch"] == 0


def test_training_adapts_on_the_fit_split_and_stops_on_the_holdout(fixture_data, tiny_options, tmp_path,
                                                                  monkeypatch, improving_holdout):
    import dataclasses

    import simengine.training.finetune
    from simengine.training.pipeline import train_model

    real, seen = simengine.training.finetune.finetune_encoder, {}

    def recording(encoder, items, held_out, *args, **kwargs):
        seen.update(fit={i.sha256 for i in items}, held={i.sha256 for i in held_out})
        return real(encoder, items, held_out, *args, **kwargs)

    monkeypatch.setattr(simengine.training.finetune, "finetune_encoder", recording)
    out = train_model(fixture_data, tmp_path / "tuned", dataclasses.replace(tiny_options, finetune=True),
                      finetune=FinetuneOptions(blocks=1, **QUICK), runtime="torch")
    config = json.loads((out / "config.json").read_text())
    held = set(config["holdout_sha256"])
    assert held and seen["held"] == held and not held & seen["fit"]
    assert len(seen["fit"]) + len(held) == len(scan_split(fixture_data, "train"))
    assert config["training"]["backbone"]["adapted"] and config["encoder"]["weights_source"] == "bundle:fine-tuned"


def _items(n: int, labels: list[str]) -> list[Item]:
    return [Item(path=f"{k}.jpg", label=labels[k % len(labels)], split="train", sha256=f"{k:064x}") for k in range(n)]


@pytest.mark.parametrize("separated, adapts", [(True, False), (False, True)])
def test_by_default_training_adapts_where_the_frozen_features_confuse_the_classes(separated, adapts):
    rng = np.random.default_rng(0)
    items = _items(600, ["a", "b", "c"])
    codes = np.array([k % 3 for k in range(600)])
    x = rng.normal(size=(600, 16)) + (8 * np.eye(16)[codes] if separated else 0)
    held = {i.sha256 for i in items[::10]}
    choice = adapt_backbone(x, items, held, None)
    assert choice["adapt"] is adapts and "precision@1" in choice["reason"]
    assert adapt_backbone(x, items, held, not adapts)["adapt"] is (not adapts)  # a flag overrides


def test_small_collections_stay_frozen_by_default():
    items = _items(100, ["a", "b", "c"])
    choice = adapt_backbone(np.zeros((100, 4)), items, {i.sha256 for i in items[::10]}, None)
    assert not choice["adapt"] and "fewer than" in choice["reason"]
