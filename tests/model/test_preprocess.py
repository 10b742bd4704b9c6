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


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("size", [(1000, 37), (37, 1000), (4000, 3)])
def test_extreme_shapes_match_timm_within_two_levels(config, size):
    img = photo("coffee").resize(size)
    expected = timm.data.create_transform(**config)(img).numpy()
    got = Preprocess(config)(img)
    level = 1 / 255 / min(config["std"])
    diff = np.abs(got - expected)
    assert got.shape == expected.shape and diff.max() <= 2 * level + 1e-5 and diff.mean() < 0.2 * level


def test_a_thin_strip_costs_what_its_output_costs(tmp_path):
    """A 1 x 40000 PNG of a few hundred bytes once took 11 GB and a minute: resized as a whole to 256 x 10M."""
    import subprocess
    import sys

    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 40000), (200, 30, 30)).save(strip)
    script = (
        "import resource, sys, time\n"
        "from simengine.data.decode import load_rgb\n"
        "from simengine.model.preprocess import Preprocess\n"
        "config = {'input_size': (3, 224, 224), 'interpolation': 'bicubic', 'mean': (0.5,) * 3, 'std': (0.5,) * 3,"
        " 'crop_pct': 0.875}\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter()\n"
        f"out = Preprocess(config)(load_rgb({str(strip)!r}))\n"
        "print(out.shape, time.perf_counter() - start, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shape, seconds, grown_mb = result.stdout.rsplit(" ", 2)[0], *map(float, result.stdout.split()[-2:])
    assert shape == "(3, 224, 224)" and seconds < 2 and grown_mb < 100
