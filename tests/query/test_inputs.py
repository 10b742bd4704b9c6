"""Every kind of image input the Engine takes (paths, PIL images, arrays, bytes, file objects, ids, lists) gives the
embedding of the same picture, and a bad input is named briefly in one line."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from simengine.errors import ImageLoadError, SimengineError
from simengine.query.engine import Engine


@pytest.fixture(scope="module")
def engine(built_index):
    return Engine.open(built_index)


def test_every_kind_of_input_embeds_the_same_picture(engine, val):
    path = val["coffee"][0]
    by_path = engine.embed(path)
    assert by_path.shape == (engine.model.dim,) and np.linalg.norm(by_path) == pytest.approx(1, abs=1e-5)
    with open(path, "rb") as fh:
        same_bytes = {"str": engine.embed(str(path)), "bytes": engine.embed(path.read_bytes()),
                      "bytearray": engine.embed(bytearray(path.read_bytes())), "file": engine.embed(fh),
                      "BytesIO": engine.embed(io.BytesIO(path.read_bytes()))}
    for kind, vector in same_bytes.items():  # decoded exactly as the file is
        np.testing.assert_allclose(vector, by_path, atol=1e-5, err_msg=kind)
    picture = Image.open(path)
    pixels = np.asarray(picture.convert("RGB"))
    decoded = {"PIL": engine.embed(picture), "uint8 HxWx3": engine.embed(pixels),
               "float HxWx3": engine.embed(pixels / 255.0), "RGBA": engine.embed(picture.convert("RGBA"))}
    for kind, vector in decoded.items():  # the file's JPEG decoding may differ in the last bits (DCT scaling)
        assert float(vector @ by_path) > 0.99, kind
    grey = engine.embed(np.asarray(picture.convert("L")))
    np.testing.assert_allclose(grey, engine.embed(picture.convert("L")), atol=1e-5)


def test_ids_lists_and_mixed_questions(engine, val):
    stored = engine.index.vectors([3])[0]
    np.testing.assert_allclose(engine.embed(3), stored)
    np.testing.assert_allclose(engine.embed("id:3"), stored)
    np.testing.assert_allclose(engine.embed(np.int64(3)), stored)
    rows = engine.embed([val["coffee"][0], Image.open(val["coffee"][1]), 3])
    assert rows.shape == (3, engine.model.dim) and engine.embed([]).shape == (0, engine.model.dim)
    picture = Image.open(val["coffee"][0])
    answer = engine.pair(picture, val["coffee"][0].read_bytes())
    assert answer.same and answer.a == f"<PIL image {picture.width}x{picture.height} RGB>"
    assert answer.b.startswith("<") and answer.b.endswith(" bytes>")
    assert engine.neighbours(5, k=1, include_self=True).neighbours[0].id == 5
    assert engine.triplet(np.asarray(picture), val["rocket"][0], 5).images[0].startswith("<array uint8")


@pytest.mark.parametrize("bad, message", [
    ({"a": 1}, r"^<dict>: not an image; give a path"),
    (True, r"^<bool>: not an image"),
    ("x" * 20_000, r"^<str of 20,000 characters: 'xxxxx.*'\.\.\.>: not a path"),
    (b"\xff\xd8" + b"\x00" * 20_000, r"^<20,002 bytes>: "),
    (np.zeros((10, 10, 2), np.uint8), r"^<array uint8 \(10, 10, 2\)>: an image array is H x W"),
    (np.full((10, 10), 2.0), r"^<array float64 \(10, 10\)>: float arrays hold values in \[0, 1\]"),
    (np.zeros((10, 10), np.uint16), r"^<array uint16 \(10, 10\)>: give uint8 values"),
    (io.StringIO("text"), r"^<file object>: a file opened in text mode"),
])
def test_a_bad_input_is_named_briefly_in_one_line(engine, bad, message):
    with pytest.raises((SimengineError, ImageLoadError)) as caught:
        engine.embed(bad)
    assert len(str(caught.value)) < 250 and "\n" not in str(caught.value)
    assert re.search(message, str(caught.value)), str(caught.value)


def test_a_picture_over_the_pixel_limit_is_refused(built_index):
    small = Engine.open(built_index, max_pixels=10_000)
    with pytest.raises(ImageLoadError, match=r"<PIL image 200x100 RGB>: image too large"):
        small.embed(Image.new("RGB", (200, 100)))
    with pytest.raises(ImageLoadError, match=r"image too large"):
        small.embed(np.zeros((200, 100, 3), np.uint8))
