"""Generated copies: every transform yields an RGB picture of the original, reproducibly for a seed."""

import numpy as np
import pytest

from fixtures import photo
from simengine.dedup.copies import TRANSFORMS, make_copy


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_keeps_the_picture(name):
    original = photo("coffee").resize((200, 150))
    copy = TRANSFORMS[name](original, np.random.default_rng(0))
    assert copy.mode == "RGB" and 0.4 * 200 <= copy.width <= 200 and copy.height <= 150
    if name in ("jpeg", "format", "text", "colour"):
        assert copy.size == original.size
        difference = np.abs(np.asarray(copy, np.float32) - np.asarray(original, np.float32)).mean()
        assert 0 < difference < 60  # changed, yet the same picture


def test_copies_are_reproducible_and_named():
    original = photo("rocket").resize((120, 160))
    a, names_a = make_copy(original, np.random.default_rng(7))
    b, names_b = make_copy(original, np.random.default_rng(7))
    assert names_a == names_b and 1 <= len(names_a) <= 2 and set(names_a) <= set(TRANSFORMS)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    _, only = make_copy(original, np.random.default_rng(1), kinds=("crop",))
    assert only == ["crop"]
