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


def test_missing_file_directory_fifo_and_symlink_loop(tmp_path):
    import os

    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    for name, reason in [("absent.jpg", "no such file"), (".", "a directory, not an image file"),
                         ("loop", "too many levels of symbolic links"), ("fifo", "not a regular file")]:
        with pytest.raises(ImageLoadError) as caught:
            images.load_rgb(tmp_path / name)
        assert str(caught.value) == f"{tmp_path / name}: {reason}"


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


def _png16(path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB or RGBA PNG, written by hand (Pillow writes 8-bit colour PNGs only)."""
    import struct
    import zlib

    height, width, channels = rgb16.shape
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(  # noqa: E731
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 16, 2 if channels == 3 else 6, 0, 0, 0)
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _same_picture(tmp_path, case: str) -> tuple:
    """(a file in an unusual mode, the 8-bit RGB reference of the same picture, tolerated mean difference)."""
    from PIL import ImageCms

    reference = photo("coffee").resize((96, 64))
    grey = reference.convert("L")
    g = np.asarray(grey)
    path = tmp_path / f"{case}.{'jpg' if case == 'CMYK' else 'tif' if case in ('LAB', 'F') or case.startswith('I ') else 'png'}"
    if case == "I;16":
        Image.fromarray(g.astype(np.uint16) * 257).save(path)
        return path, grey.convert("RGB"), 0.5
    if case.startswith("12-bit"):  # in a 16-bit PNG whose sBIT chunk says 12 bits are significant
        from PIL.PngImagePlugin import PngInfo

        significant = PngInfo()
        significant.add(b"sBIT", bytes([12]))
        scale = 257 if "scaled up" in case else 4095 / 255  # as the standard asks, or as cameras often store it
        Image.fromarray(np.rint(g.astype(np.float64) * scale).astype(np.uint16)).save(path, pnginfo=significant)
        return path, grey.convert("RGB"), 0.5
    if case in ("I 16-bit range", "I 8-bit range"):
        Image.fromarray(g.astype(np.int32) * (257 if "16" in case else 1)).save(path)
        return path, grey.convert("RGB"), 0.5
    if case == "F":
        Image.fromarray(g.astype(np.float32) / 255).save(path)
        return path, grey.convert("RGB"), 0.5
    if case in ("RGB16", "RGBA16"):
        rgb = np.asarray(reference).astype(np.uint16) * 257
        if case == "RGBA16":
            rgb = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 65535, np.uint16)], axis=2)
        _png16(path, rgb)
        return path, reference, 0.5
    if case == "LAB":
        to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
        ImageCms.applyTransform(reference, to_lab).save(path)
        return path, reference, 3.0
    if case == "CMYK":
        reference.convert("CMYK").save(path, quality=95)
        return path, reference, 4.0
    if case == "P+transparency":
        palette = reference.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
        palette.info["transparency"] = 255  # an unused index: nothing becomes transparent
        palette.save(path, transparency=255)
        return path, palette.convert("RGB"), 0.5
    raise ValueError(case)


@pytest.mark.parametrize("case", ["I;16", "12-bit", "12-bit scaled up", "I 16-bit range", "I 8-bit range", "F", "RGB16", "RGBA16", "LAB", "CMYK",
                                  "P+transparency"])
def test_every_mode_decodes_to_the_same_picture(tmp_path, case):
    path, reference, tolerance = _same_picture(tmp_path, case)
    out = images.load_rgb(path)
    diff = np.abs(np.asarray(out, np.float32) - np.asarray(reference, np.float32))
    assert out.mode == "RGB" and out.size == reference.size
    assert diff.mean() <= tolerance, f"{case}: mean difference {diff.mean():.2f} levels"


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (7000, 7000)).save(path, optimize=True)  # 49 MP in 6 kB
    assert path.stat().st_size < 20_000 and 7000 * 7000 > images.MAX_PIXELS
    with pytest.raises(ImageLoadError, match=r"too large to decode safely \(7000x7000 px, more than 40,000,000\)"):
        images.load_rgb(path)
    assert images.load_rgb(path, max_pixels=50_000_000).size == (7000, 7000)


def test_bytes_decode_like_the_file_and_errors_carry_the_given_name(tmp_path, jpeg_bytes):
    path = tmp_path / "ok.jpg"
    path.write_bytes(jpeg_bytes)
    from_file, from_memory = images.load_rgb(path, draft_size=(256, 256)), images.load_rgb(jpeg_bytes, draft_size=(256, 256))
    assert np.array_equal(np.asarray(from_file), np.asarray(from_memory))
    with pytest.raises(ImageLoadError, match=r"^upload:cut\.jpg: corrupt or truncated"):
        images.load_rgb(jpeg_bytes[:400], name="upload:cut.jpg")


def test_formats_restrict_what_is_tried_and_the_format_comes_from_the_header(tmp_path, jpeg_bytes):
    from simengine.errors import UnsupportedImageError

    ppm = io.BytesIO()
    photo("coffee").save(ppm, format="PPM")  # Pillow decodes PPM, the service does not accept it
    assert images.load_rgb(ppm.getvalue()).size == (600, 400)
    with pytest.raises(UnsupportedImageError, match=r"^x\.ppm: not an image in a supported format \(JPEG, PNG"):
        images.load_rgb(ppm.getvalue(), name="x.ppm", formats=images.WEB_FORMATS)
    disguised = tmp_path / "page.html"  # a JPEG whatever its name says
    disguised.write_bytes(jpeg_bytes)
    (tmp_path / "page2.html").write_bytes(b"<script>alert(1)</script>")
    (tmp_path / "x.ppm").write_bytes(ppm.getvalue())
    assert images.image_format(disguised) == "JPEG"
    mpo = tmp_path / "phone.jpg"  # a JPEG with a second picture inside, as phones write them
    photo("coffee").save(mpo, format="MPO", save_all=True, append_images=[photo("coffee").resize((60, 40))])
    assert images.image_format(mpo) == "MPO" and images.load_rgb(mpo).size == (600, 400)
    from simengine.service.app import mime_type

    assert mime_type(images.image_format(mpo)) == "image/jpeg"  # served as what browsers show
    assert images.image_format(tmp_path / "page2.html") is None and images.image_format(tmp_path / "x.ppm") is None


def test_postscript_is_never_rendered_whatever_the_file_is_called(tmp_path):
    """Pillow renders EPS by running Ghostscript: files of a collection are never handed to it."""
    fake = tmp_path / "holiday.jpg"
    fake.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageLoadError, match="never rendered"):
        images.load_rgb(fake)


def test_a_small_file_of_many_pixels_costs_what_its_result_costs(tmp_path):
    """A 91 KB 16-bit PNG and a 170 KB RGBA PNG of 6300 x 6300 px (legal: under the pixel limit) were scaled and
    composited at full size: 1.2 GB and 10 s each. They are reduced first, in their own mode."""
    import subprocess
    import sys

    from PIL import Image

    Image.new("I;16", (6300, 6300), 4000).save(tmp_path / "u16.png")
    Image.new("RGBA", (6300, 6300), (10, 200, 30, 128)).save(tmp_path / "rgba.png")
    code = ("import resource, sys, numpy as np; from simengine.data.decode import load_rgb\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "for name in sys.argv[1:]:\n"
            "    img = load_rgb(name, draft_size=(256, 256)); print(*np.asarray(img)[5, 5], min(img.size))\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "u16.png"), str(tmp_path / "rgba.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    u16, rgba, grown_mb = result.stdout.splitlines()
    assert u16.split()[:3] == ["16", "16", "16"] and int(u16.split()[3]) >= 512  # 4000 of 65535, as before
    assert rgba.split()[:3] == ["132", "227", "142"]  # half-transparent green over white, as before
    assert int(grown_mb) < 400


@pytest.mark.parametrize("content, reason", [(b"", "an empty file"), (b"hello, this is text\n", "not an image"),
                                             (b"%!PS-Adobe-3.0\n", "EPS/PostScript, which is never rendered")])
def test_a_file_no_reader_recognises_is_named_for_what_it_is(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    for source in (path, content):
        with pytest.raises(ImageLoadError) as caught:
            images.load_rgb(source)
        assert reason in str(caught.value) and ("EPS" in str(caught.value)) == content.startswith(b"%!PS")
