import shutil
import time

import numpy as np
import pytest
import torch

from fixtures import photo
from simengine.model import backbones
from simengine.errors import SimengineError

# Imagenette class folder -> ImageNet-1k class index.
IMAGENET_INDEX = {
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701,
}


@pytest.fixture(scope="module")
def lite0_classifier():
    weights = backbones.packaged_weights("tf_efficientnet_lite0")
    return backbones.create_backbone("tf_efficientnet_lite0", weights, keep_classifier=True)


def classify(model, images) -> np.ndarray:
    import timm.data

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.inference_mode():
        return model(torch.stack([transform(img) for img in images])).argmax(-1).numpy()


def test_lite0_weights_load_strictly_and_tag_matches():
    weights = backbones.packaged_weights("tf_efficientnet_lite0")
    assert weights.sha256.startswith("57934424")
    state = backbones.remap_lukemelas(backbones.read_state_dict(weights.path), [1, 2, 2, 3, 3, 4, 1])
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected


def test_coffee_photo_is_espresso(lite0_classifier):
    assert classify(lite0_classifier, [photo("coffee")])[0] == 967


def test_tampered_weights_file_is_refused(tmp_path, monkeypatch):
    weights = backbones.packaged_weights("tf_efficientnet_lite0")
    fake = tmp_path / weights.path.name
    shutil.copyfile(weights.path, fake)
    with open(fake, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    monkeypatch.setattr(backbones, "PACKAGED_WEIGHTS", {"tf_efficientnet_lite0": ("fake_weights_module", "File")})

    class File:
        @staticmethod
        def get_model_file_path():
            return str(fake)

    import types
    import sys

    monkeypatch.setitem(sys.modules, "fake_weights_module", types.SimpleNamespace(File=File))
    with pytest.raises(SimengineError, match="does not match the tag"):
        backbones.packaged_weights("tf_efficientnet_lite0")


def test_default_choice_offline_is_lite0_and_fast(monkeypatch):
    monkeypatch.setattr(backbones, "hub_weights", lambda name, allow_network=True: None)
    choice = backbones.choose_backbone()
    assert choice.name == "tf_efficientnet_lite0"
    assert "offline" in choice.reason


def test_unreachable_hub_gives_up_within_seconds(monkeypatch):
    monkeypatch.setattr(backbones, "HUB_HOST", ("127.0.0.1", 9))  # loopback discard port: nothing listens
    start = time.monotonic()
    assert backbones._hub_reachable() is False
    assert time.monotonic() - start < backbones.HUB_TIMEOUT_S + 1.0


def test_offline_mode_never_touches_the_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbones, "_hub_reachable", lambda: pytest.fail("network probed in offline mode"))
    assert backbones.hub_weights("efficientnet_b0") is None


def test_unknown_backbone_without_weights_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backbones, "hub_weights", lambda name, allow_network=True: None)
    with pytest.raises(SimengineError, match="--weights"):
        backbones.choose_backbone("efficientnet_b0")


def test_local_checkpoint_for_any_timm_model(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0)
    path = tmp_path / "b0.safetensors"
    save_file(model.state_dict(), str(path))
    choice = backbones.choose_backbone("efficientnet_b0", path)
    loaded = backbones.create_backbone(choice.name, choice.weights)
    assert choice.weights.source == "file:b0.safetensors"
    assert loaded.num_features == 1280


def test_imagenette_val_classes_are_named_right(lite0_classifier, imagenette):
    """First 10 val images of each class. Measured: 96/100 right among the 10 Imagenette classes' ImageNet logits,
    90/100 with the right class in the 1000-way top-5 (68/100 top-1: church is often 'monastery' or 'bell cote')."""
    import timm.data

    from simengine.data.decode import load_rgb

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=lite0_classifier))
    columns = list(IMAGENET_INDEX.values())
    among_ten = top5 = total = 0
    for k, (wnid, expected) in enumerate(IMAGENET_INDEX.items()):
        files = sorted((imagenette / "val" / wnid).iterdir())[:10]
        with torch.inference_mode():
            logits = lite0_classifier(torch.stack([transform(load_rgb(f)) for f in files]))
        among_ten += int((logits[:, columns].argmax(1) == k).sum())
        top5 += int((logits.topk(5).indices == expected).any(1).sum())
        total += len(files)
    assert among_ten / total >= 0.95
    assert top5 / total >= 0.88
