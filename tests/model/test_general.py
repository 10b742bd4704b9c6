"""The general twin: every bundle carries one, and an unlabelled collection unlike the training classes gets it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from simengine.model.bundle import load_bundle, read_config
from simengine.model.general import CENTROIDS, GENERAL_DIR, choose_bundle, unlike_training_share

OTHER_PHOTOS = ("brick", "camera", "clock", "coins", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
                "moon", "page", "retina", "text")


@pytest.fixture(scope="module")
def other_photos(tmp_path_factory):
    """Photos of things the fixture model never trained on (its classes: coffee, chelsea, astronaut, rocket)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("other")
    for name in OTHER_PHOTOS:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{name}.jpg", quality=90)
    return folder


def test_every_bundle_has_a_general_twin(bundle_dir, model):
    twin_dir = bundle_dir / GENERAL_DIR
    config = read_config(twin_dir)
    assert config["general"] is True and config["calibration"]["default"] == "distance"
    twin = load_bundle(twin_dir)
    assert twin.dim == read_config(bundle_dir)["heads"]["embedding"]["in_dim"] == 1280  # Lite0's feature width
    assert twin.hash != model.hash
    features = np.random.default_rng(0).random((4, twin.dim)).astype(np.float32)
    expected = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(twin.embed_features(features), expected, atol=1e-5)  # the backbone's own features
    assert (bundle_dir / CENTROIDS).is_file()


def test_collections_are_matched_to_the_training_classes(bundle_dir, model, fixture_data, other_photos):
    def features(paths):
        return model.encoder.embed_paths(paths).vectors

    like = features(sorted((fixture_data / "val").glob("*/*.jpg")))
    unlike = features(sorted(other_photos.glob("*.jpg")))
    assert unlike_training_share(bundle_dir, like) <= 0.25
    assert unlike_training_share(bundle_dir, unlike) >= 0.75
    assert choose_bundle(bundle_dir, lambda: like)[0] == bundle_dir
    chosen, record = choose_bundle(bundle_dir, lambda: unlike)
    assert chosen == bundle_dir / GENERAL_DIR and record["embedding"] == "general"
    assert choose_bundle(bundle_dir / GENERAL_DIR, lambda: unlike) == (bundle_dir / GENERAL_DIR, {
        "embedding": "general", "reason": "the bundle given is a general twin"})


def test_an_unlabelled_build_of_other_things_uses_the_twin(bundle_dir, other_photos, fixture_data, tmp_path):
    from simengine.index.reader import Index
    from simengine.index.build import build_index

    index, _, _ = build_index(other_photos, bundle_dir, tmp_path / "other")
    with Index(index) as idx:
        info = idx.info()
        assert info["embedding"]["embedding"] == "general" and info["dim"] == read_config(bundle_dir / GENERAL_DIR)[
            "heads"]["embedding"]["dim"]
        assert info["thresholds_estimated"] and "general twin" in info["calibrated_on"]
    same, _, _ = build_index(fixture_data / "val", bundle_dir, tmp_path / "same", labels="none")
    with Index(same) as idx:
        assert idx.info()["embedding"]["embedding"] == "trained"
        assert not (idx.model_dir / GENERAL_DIR).exists()  # the index keeps the bundle it uses, not the twin
        assert json.loads((same / "manifests" / (same / "CURRENT").read_text().strip()).read_text())["dim"] == 256


def test_bad_targets_fail_before_any_image_is_looked_at(bundle_dir, other_photos, tmp_path, monkeypatch):
    from simengine.errors import SimengineError
    from simengine.model.feature_cache import FeatureCache
    from simengine.index.build import build_index

    def never(*args, **kwargs):
        raise AssertionError("features computed before the cheap checks")

    monkeypatch.setattr(FeatureCache, "features", never)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not an index")
    with pytest.raises(SimengineError, match="is not an index"):
        build_index(other_photos, bundle_dir, tmp_path / "taken")
    with pytest.raises(SimengineError, match="unknown index type"):
        build_index(other_photos, bundle_dir, tmp_path / "new", index_type="bogus")


def test_a_bundle_is_written_whole_with_its_twin_or_not_at_all(fixture_data, tiny_options, tmp_path, monkeypatch):
    import simengine.training.pipeline as pipeline

    def failing_twin(*args, **kwargs):
        raise RuntimeError("killed while writing the twin")

    monkeypatch.setattr(pipeline, "_save_general_twin", failing_twin)
    with pytest.raises(RuntimeError):
        pipeline.train_model(fixture_data, tmp_path / "bundle", tiny_options)
    assert not (tmp_path / "bundle").exists()
