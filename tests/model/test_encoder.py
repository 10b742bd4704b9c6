import numpy as np
import pytest

from fixtures import photo
from simengine.model.encoder import Encoder


@pytest.fixture(scope="module")
def files(tmp_path_factory, fixture_data):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "not_image.jpg").write_text("hello")
    good = sorted((fixture_data / "val").glob("*/*.jpg"))
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    photo("chelsea").convert("L").save(folder / "gray.png")
    return good + [folder / "not_image.jpg", folder / "missing.jpg", folder / "truncated.jpg", folder / "gray.png"]


def test_batch_reports_bad_files_and_embeds_the_rest(encoder, files):
    result = encoder.embed_paths(files, batch_size=4)
    failed = {path.rsplit("/", 1)[-1]: reason for _, path, reason in result.failed}
    assert set(failed) == {"not_image.jpg", "missing.jpg", "truncated.jpg"}
    assert "not an image" in failed["not_image.jpg"] and "no such file" in failed["missing.jpg"]
    assert len(result.ok) == len(files) - 3 and result.vectors.shape == (len(files) - 3, encoder.dim)
    assert np.isfinite(result.vectors).all()


def test_a_failure_inside_preprocessing_is_an_image_load_error_naming_the_image(encoder, files, monkeypatch):
    from simengine.errors import ImageLoadError

    def broken(img):
        raise IndexError("odd shape")

    monkeypatch.setattr(type(encoder.preprocess), "__call__", lambda self, img: broken(img))
    with pytest.raises(ImageLoadError, match=r"^upload:a\.jpg: cannot preprocess \(odd shape\)$"):
        encoder.load_image(files[0].read_bytes(), name="upload:a.jpg")
    result = encoder.embed_paths(files[:2])
    assert result.ok == [] and [reason for _, _, reason in result.failed] == [
        f"{files[0]}: cannot preprocess (odd shape)", f"{files[1]}: cannot preprocess (odd shape)"]


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_runtimes_agree_with_torch(encoder, files, runtime):
    onnx_encoder = Encoder.from_torch(encoder.identity, encoder.torch_model, runtime=runtime)
    assert onnx_encoder.runtime.name == runtime
    torch_encoder = Encoder.from_torch(encoder.identity, encoder.torch_model, runtime="torch")
    a = onnx_encoder.embed_paths(files[:6]).vectors
    b = torch_encoder.embed_paths(files[:6]).vectors
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 1 - 1e-5
    assert np.abs(a - b).max() < 1e-3


def test_same_image_same_embedding_across_batches(encoder, files):
    first = encoder.embed_paths(files[:5], batch_size=5).vectors
    again = encoder.embed_paths(files[:5][::-1], batch_size=2).vectors[::-1]
    cosine = (first * again).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(again, axis=1)
    assert cosine.min() > 1 - 1e-5


def test_flip_averages_image_and_mirror(encoder, files):
    x = np.stack([encoder.load_image(files[0])])
    np.testing.assert_allclose(encoder.forward(x, flip=True), (encoder.forward(x) + encoder.forward(x[..., ::-1])) / 2, atol=1e-5)


def test_identity_records_backbone_and_weights(encoder):
    ident = encoder.identity
    assert ident["backbone"] == "tf_efficientnet_lite0"
    assert ident["weights_sha256"].startswith("57934424")
    assert ident["data_config"]["mean"] == [0.5, 0.5, 0.5] and ident["data_config"]["interpolation"] == "bicubic"


def test_feature_cache_reuses_and_resumes(encoder, files, tmp_path):
    from simengine.files import sha256_file
    from simengine.model.feature_cache import FeatureCache

    good = files[:6]
    shas = [sha256_file(p) for p in good]
    cache = FeatureCache(encoder, root=tmp_path)
    cache.features(good[:3], shas[:3])  # an "interrupted" run that got half way
    assert len(cache.lookup(shas)) == 3
    calls = []
    original = encoder.embed_paths
    encoder.embed_paths = lambda paths, **kw: calls.append(len(paths)) or original(paths, **kw)
    try:
        feats, failed = FeatureCache(encoder, root=tmp_path).features(good, shas)
    finally:
        del encoder.embed_paths
    assert calls == [3] and not failed and np.isfinite(feats).all()


def test_feature_cache_embeds_equal_bytes_once_and_fills_every_row(encoder, files, tmp_path):
    import shutil

    from simengine.files import sha256_file
    from simengine.model.feature_cache import FeatureCache

    twin = tmp_path / "same-bytes.jpg"
    shutil.copyfile(files[0], twin)
    broken = tmp_path / "broken-again.jpg"
    shutil.copyfile(files[-2], broken)  # the truncated JPEG, twice
    paths = [files[0], twin, files[-2], broken]
    calls = []
    original = encoder.embed_paths
    encoder.embed_paths = lambda p, **kw: calls.append(len(p)) or original(p, **kw)
    try:
        feats, failed = FeatureCache(encoder, root=tmp_path).features(paths, [sha256_file(p) for p in paths])
    finally:
        del encoder.embed_paths
    assert calls == [2] and np.array_equal(feats[0], feats[1])
    assert np.isnan(feats[2:]).all() and sorted(row for row, _, _ in failed) == [2, 3]
