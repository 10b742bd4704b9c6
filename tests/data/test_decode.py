"""Every bad-input case is either decoded correctly to RGB or refused with a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from fixtures import photo
from simengine.data import decode as images
from simengine.errors import ImageLoadError


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    photo("coffee").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_good_jpeg_loads_as_rgb(tmp_path, jpeg_bytes):
    path = tmp_path / "ok.jpg"
    path.write_bytes(jpeg_bytes)
    img = images.load_rgb(path)
    assert img.mode == "RGB" and img.size == (600, 400)


def test_truncated_jpeg_is_refused(tmp_path, jpeg_bytes):
    path = tmp_path / "truncated.jpg"
    path.write_bytes(jpeg_bytes[: len(jpeg_bytes) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        images.load_rgb(path)


def test_corrupt_jpeg_header_is_refused(tmp_path, jpeg_bytes):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(jpeg_bytes[:20] + b"\x00" * 200 + jpeg_bytes[220:])
    with pytest.raises(ImageLoadError):
        images.load_rgb(path)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(ImageLoadError, match="not an image"):
        images.load_rgb(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        images.load_rgb(tmp_path / "absent.jpg")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        images.load_rgb(tmp_path)


def test_unreadable_file(tmp_path, jpeg_bytes, monkeypatch):
    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes)
    path.chmod(0)

    def denied(*args, **kwargs):  # root ignores file modes, so deny the open itself as the OS would
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images.Image, "open", denied)
    with pytest.raises(ImageLoadError, match="unreadable"):
        images.load_rgb(path)


@pytest.mark.parametrize("factor", [1.5, 3.0])  # Pillow warns between 1x and 2x its limit, raises beyond
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, factor):
    path = tmp_path / "big.png"
    Image.new("RGB", (1000, 1000)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1000 * 1000 / factor))
    with pytest.raises(ImageLoadError, match="too large"):
        images.load_rgb(path)


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16"])
def test_other_modes_become_rgb(tmp_path, mode):
    src = photo("chelsea").resize((64, 48))
    img = src.convert("I;16") if mode == "I;16" else src.convert(mode)
    path = tmp_path / f"img.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    out = images.load_rgb(path)
    assert out.mode == "RGB" and out.size == (64, 48)


def test_transparent_pixels_are_flattened_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert images.load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 30), (255, 0, 0))
    img.paste((0, 0, 255), (30, 0, 60, 30))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    out = images.load_rgb(path)
    assert out.size == (30, 60)
    top, bottom = np.asarray(out)[5, 15], np.asarray(out)[55, 15]
    assert top[0] > 200 and bottom[2] > 200  # red rotated to the top, blue to the bottom


def test_draft_decodes_large_jpeg_smaller_but_not_below_target(tmp_path):
    path = tmp_path / "big.jpg"
    photo("astronaut").resize((2048, 2048)).save(path, quality=90)
    out = images.load_rgb(path, draft_size=(256, 256))
    assert 256 <= min(out.size) < 2048
