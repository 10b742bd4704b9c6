import numpy as np
import pytest
import timm.data

from fixtures import photo
from simengine.model.preprocess import Preprocess

CONFIGS = [
    {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 0.875, "crop_mode": "center"},
    {"input_size": (3, 240, 240), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.882, "crop_mode": "center"},
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name,size", [("coffee", None), ("astronaut", None), ("chelsea", (160, 213)), ("rocket", (213, 160))])
def test_matches_timm_transform(config, name, size):
    img = photo(name)
    if size:
        img = img.resize(size)
    expected = timm.data.create_transform(**config)(img).numpy()
    got = Preprocess(config)(img)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
