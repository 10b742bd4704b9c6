"""Layout descriptors and keypoint verification on real photos (scikit-image's) and their generated copies."""

import numpy as np
import pytest
from PIL import Image

from fixtures import photo
from simengine.dedup.copies import TRANSFORMS
from simengine.dedup.keypoints import agreeing_matches, keypoints
from simengine.dedup.layout import DIM, layout_descriptor, layout_descriptors


def test_layout_survives_resizing_recompression_colour_and_format():
    rng = np.random.default_rng(0)
    original = photo("astronaut")
    base = layout_descriptor(original)
    assert base.shape == (DIM,) and abs(np.linalg.norm(base) - 1) < 1e-5
    for kind in ("resize", "jpeg", "colour", "format"):
        assert layout_descriptor(TRANSFORMS[kind](original, rng)) @ base > 0.97, kind
    for other in ("coffee", "chelsea", "rocket"):
        assert layout_descriptor(photo(other)) @ base < 0.9, other


def test_flat_image_has_no_layout_and_bad_files_are_reported(tmp_path):
    assert not layout_descriptor(Image.new("RGB", (50, 50), "grey")).any()
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    photo("coffee").save(good)
    bad.write_bytes(b"\xff\xd8\xff not really")
    out, failed = layout_descriptors([good, bad])
    assert out[0].any() and not out[1].any() and [row for row, _ in failed] == [1]


@pytest.mark.parametrize("kind", ["crop", "rotate", "text", "jpeg"])
def test_copies_have_many_agreeing_matches_other_photos_few(kind):
    rng = np.random.default_rng(1)
    original = photo("chelsea")
    found = keypoints(original)
    assert agreeing_matches(found, keypoints(TRANSFORMS[kind](original, rng))) >= 40
    assert agreeing_matches(found, keypoints(photo("coffee"))) < 15


def test_textures_of_one_kind_do_not_match():
    """Brick, gravel and grass: different photos of repetitive surfaces, where stray matches are likeliest."""
    textures = [keypoints(photo(name)) for name in ("brick", "gravel", "grass")]
    assert max(agreeing_matches(a, b) for a in textures for b in textures if a is not b) < 15


def test_tiny_and_thin_images_give_no_keypoints_not_an_error():
    strip, speck = keypoints(Image.new("RGB", (1, 40000), "red")), keypoints(Image.new("RGB", (3, 3)))
    assert agreeing_matches(strip, speck) == 0 and agreeing_matches(strip, keypoints(photo("coffee"))) == 0
