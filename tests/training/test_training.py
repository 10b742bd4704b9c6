import json
import shutil

import numpy as np
import pytest

from simengine.errors import BundleError
from simengine.model.bundle import bundle_hash, load_bundle, read_config
import torch
from torch.nn import functional as F

from simengine.data.evalsets import sample_training_triplets
from simengine.model.heads import EmbeddingHead
from simengine.model.heads import embed_numpy
from simengine.training.fit import TrainOptions, split_holdout, train_embedding_head


def _blobs(n_classes=4, per=20, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 0.6
    x = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres]).astype(np.float32)
    return x, np.repeat([f"c{i}" for i in range(n_classes)], per)


@pytest.mark.parametrize("mining", ["batch-hard", "semihard", "random"])
def test_triplet_loss_goes_down(mining):
    x, y = _blobs()
    fit, hold = split_holdout(y, 0.2, 0)
    opts = TrainOptions(mining=mining, dim=16, steps=150, eval_every=50, patience=10, classes_per_batch=4, per_class=5,
                        random_triplets=200)
    torch.manual_seed(opts.seed)
    untrained = EmbeddingHead(x.shape[1], opts.dim)  # the same initial weights training starts from
    head, history = train_embedding_head(x[fit], y[fit], x[hold], y[hold], opts)
    fixed = torch.tensor([t.indices for t in sample_training_triplets(list(y), 500, seed=9)])

    def loss_of(h):
        e = torch.from_numpy(embed_numpy(h, x))[fixed]
        return float(F.triplet_margin_loss(e[:, 0], e[:, 1], e[:, 2], margin=opts.margin))

    assert loss_of(head) < 0.5 * loss_of(untrained)
    from simengine.evaluation.metrics import retrieval_metrics

    def map_at_r(h):
        return retrieval_metrics(embed_numpy(h, x[hold]), y[hold], embed_numpy(h, x[fit]), y[fit])["map_at_r"]

    assert max(v for _, v in history.holdout) == pytest.approx(map_at_r(head))  # the best weights are kept
    assert map_at_r(head) > map_at_r(untrained) + 0.05


def test_holdout_split_is_stratified_and_disjoint():
    y = np.repeat(["a", "b", "c"], [10, 20, 5])
    fit, hold = split_holdout(y, 0.1, 0)
    assert not set(fit) & set(hold) and len(fit) + len(hold) == len(y)
    assert sorted(y[hold].tolist()) == ["a", "a", "b", "b", "c", "c"]


def test_bundle_has_config_heads_curve_and_metrics(bundle_dir):
    config = read_config(bundle_dir)
    for key in ("encoder", "heads", "training", "dataset", "calibration", "metrics"):
        assert key in config
    assert config["encoder"]["backbone"] == "tf_efficientnet_lite0"
    assert config["dataset"]["fingerprint"] and config["training"]["seed"] == 0
    assert (bundle_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((bundle_dir / "metrics.json").read_text())
    assert set(metrics["val"]["decisions"]) == {"distance", "head", "fused"}
    assert metrics["val"]["precision_at_1"] >= 0.9  # four very different photos


def test_bundle_reloads_to_identical_outputs(bundle_dir, model, fixture_data):
    files = sorted((fixture_data / "val").glob("*/*.jpg"))
    first = model.embed_paths(files).vectors
    # On the runtime the first load chose, which may be a reduced precision the gate passed (bf16 on CPUs with it).
    again = load_bundle(bundle_dir, runtime=model.runtime).embed_paths(files).vectors
    np.testing.assert_array_equal(first, again)
    torch_model = load_bundle(bundle_dir, runtime="torch")
    assert torch_model.runtime == "torch"
    fp32 = load_bundle(bundle_dir, runtime="onnxruntime").embed_paths(files).vectors
    np.testing.assert_allclose(torch_model.embed_paths(files).vectors, fp32, atol=1e-4)
    np.testing.assert_allclose(torch_model.pair_logits(first[:3], first[3:6]), model.pair_logits(first[:3], first[3:6]), atol=1e-4)


def test_same_seed_same_metrics(bundle_dir, model, fixture_data, tiny_options, tmp_path):
    from simengine.training.pipeline import train_model

    # On the precision the first training ran (its features are cached per precision), named, not `auto`.
    again = train_model(fixture_data, tmp_path / "again", tiny_options, runtime=model.runtime)
    a = json.loads((bundle_dir / "metrics.json").read_text())["val"]
    b = json.loads((again / "metrics.json").read_text())["val"]
    assert a["map_at_r"] == pytest.approx(b["map_at_r"], abs=1e-6)
    assert a["decisions"] == b["decisions"]
    assert bundle_hash(again) == bundle_hash(bundle_dir)


@pytest.mark.parametrize("damage", ["heads", "config", "version", "missing"])
def test_corrupt_bundle_is_refused(bundle_dir, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    if damage == "heads":
        with open(broken / "heads.safetensors", "r+b") as fh:
            fh.seek(-16, 2)
            fh.write(b"\xff" * 16)
    elif damage == "config":
        (broken / "config.json").write_text("{not json")
    elif damage == "version":
        config = json.loads((broken / "config.json").read_text())
        config["format_version"] = 99
        (broken / "config.json").write_text(json.dumps(config))
    else:
        (broken / "heads.safetensors").unlink()
    with pytest.raises(BundleError):
        load_bundle(broken)


def test_stale_onnx_export_falls_back_to_torch(bundle_dir, tmp_path, caplog):
    stale = tmp_path / "stale"
    shutil.copytree(bundle_dir, stale)
    with open(stale / "embedding_head.onnx", "ab") as fh:
        fh.write(b"\x00")
    model = load_bundle(stale)
    assert model.runtime == "torch"
    assert "falling back to torch" in caplog.text
    with pytest.raises(BundleError, match="does not match its recorded hash"):
        load_bundle(stale, runtime="onnxruntime")


def test_bundle_of_another_backbone_is_refused(bundle_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["encoder"]["weights_sha256"] = "0" * 64
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError):
        load_bundle(other, runtime="torch")


def test_bundle_embedding_joins_the_imagenet_posteriors(fixture_data, tiny_options, tmp_path):
    from simengine.training.pipeline import train_model

    assert not TrainOptions().posteriors  # an option, off by default
    opts = TrainOptions(**{**tiny_options.to_dict(), "posteriors": True})
    bundle_dir = train_model(fixture_data, tmp_path / "bundle", opts)
    model = load_bundle(bundle_dir)
    shapes = read_config(bundle_dir)["heads"]
    embedding = shapes["embedding"]
    assert embedding["posterior_classes"] == 1000 and embedding["head_weight"] == TrainOptions().head_weight
    assert embedding["dim"] == embedding["projection_dim"] + 1000 == shapes["pair"]["dim"] == model.dim
    vectors = model.embed_paths(sorted((fixture_data / "val").glob("*/*.jpg"))).vectors
    posteriors = vectors[:, embedding["projection_dim"]:] / (1 - embedding["head_weight"]) ** 0.5
    np.testing.assert_allclose(np.linalg.norm(posteriors, axis=1), 1, atol=1e-4)
    assert (posteriors >= 0).all()  # probabilities, scaled


def test_classifier_stays_frozen_while_the_projection_trains():
    x, y = _blobs(dim=32)
    fit, hold = split_holdout(y, 0.2, 0)
    weight, bias = torch.randn(6, 32), torch.randn(6)
    opts = TrainOptions(dim=8, steps=60, eval_every=20, classes_per_batch=4, per_class=5, posteriors=True,
                        head_weight=0.6)
    head, _ = train_embedding_head(x[fit], y[fit], x[hold], y[hold], opts, classifier=(weight, bias))
    assert torch.equal(head.classifier_weight, weight) and torch.equal(head.classifier_bias, bias)
    assert embed_numpy(head, x).shape == (len(x), 8 + 6)
    without = TrainOptions(**{**opts.to_dict(), "posteriors": False})
    plain, _ = train_embedding_head(x[fit], y[fit], x[hold], y[hold], without, classifier=(weight, bias))
    assert plain.dim == 8


def test_training_makes_the_int8_model_and_gates_it_with_both_heads(fixture_data, tiny_options, tmp_path):
    import dataclasses

    from simengine.model import runtime_choice
    from simengine.model.bundle import ONNX_FILES
    from simengine.model.general import GENERAL_DIR
    from simengine.model.quantize import int8_model, int8_sha256
    from simengine.training.pipeline import train_model

    bundle = train_model(fixture_data, tmp_path / "bundle", dataclasses.replace(tiny_options, int8=True))
    export = read_config(bundle)["onnx"]["backbone"]["sha256"]
    _, record = int8_model(bundle / ONNX_FILES["backbone"], export)
    assert record["calibration_images"] >= 16  # training images outside the holdout
    assert int8_model(bundle / GENERAL_DIR / ONNX_FILES["backbone"], export)[1] == record  # the twin runs it too
    verdict = runtime_choice.gate_result(int8_sha256(record), "openvino-int8")
    assert verdict is not None  # gated on val, so that `--runtime auto` may choose it
    assert {"precision_at_1", "general_precision_at_1", "general_pair_accuracy"} <= set(verdict["measured"])
