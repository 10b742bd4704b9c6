import torch
from safetensors.torch import save_file

from simengine.training.classifier import imagenet_classifier


def _identity(path) -> dict:
    return {"backbone": "tf_efficientnet_lite0", "weights_source": f"file:{path.name}", "weights_path": str(path)}


def test_reads_timm_and_lukemelas_classifier_keys(tmp_path):
    for prefix in ("classifier", "_fc"):
        path = tmp_path / f"{prefix}.safetensors"
        state = {"conv.weight": torch.zeros(2), f"{prefix}.weight": torch.ones(3, 4), f"{prefix}.bias": torch.arange(3.0)}
        save_file(state, str(path))
        weight, bias = imagenet_classifier(_identity(path))
        assert weight.shape == (3, 4) and torch.equal(bias, torch.arange(3.0))


def test_weights_without_classifier_give_none(tmp_path, caplog):
    path = tmp_path / "headless.safetensors"
    save_file({"conv.weight": torch.zeros(2)}, str(path))
    assert imagenet_classifier(_identity(path)) is None
    assert "no classifier" in caplog.text


def test_finetuned_backbone_gives_none():
    identity = {"backbone": "tf_efficientnet_lite0", "weights_source": "bundle:fine-tuned", "weights_path": None}
    assert imagenet_classifier(identity) is None


def test_packaged_lite0_weights_carry_the_imagenet_classifier(encoder):
    weight, bias = imagenet_classifier(encoder.identity)
    assert weight.shape == (1000, encoder.dim) and bias.shape == (1000,)
