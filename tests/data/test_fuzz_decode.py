"""Property-based fuzzing of everything that reads input: image files of every format, mode, size and shape that
Pillow writes, truncated, bit-flipped or replaced by random bytes, and CSV files of random text.

Properties: decoding gives an RGB image of the file's size or raises ImageLoadError (never another exception);
preprocessing it gives a finite tensor of the model's input size, within a time limit per case; reading a CSV gives
rows and per-line messages or one SimengineError. CI runs the default profile (a bounded number of cases);
`make fuzz` runs the long one and prints how many cases Hypothesis tried (profiles: tests/conftest.py).
"""

import io

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from simengine.data.decode import load_rgb
from simengine.data.evalsets import read_csv
from simengine.errors import ImageLoadError, SimengineError
from simengine.model.preprocess import Preprocess

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I;16", "I", "F"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
PREPROCESS = Preprocess({"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3,
                         "std": (0.5,) * 3, "crop_pct": 0.875})
sizes = st.one_of(st.tuples(st.integers(1, 64), st.integers(1, 64)),
                  st.tuples(st.integers(1, 3), st.integers(200, 40000)), st.tuples(st.integers(200, 40000), st.integers(1, 3)))


@st.composite
def image_files(draw) -> tuple[bytes, tuple[int, int] | None]:
    """(file bytes, the image's size, or None once the bytes were damaged)."""
    mode, fmt, (width, height) = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS)), draw(sizes)
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray(pixels[..., 0].astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]) * 257)
    buffer = io.BytesIO()
    try:
        img.save(buffer, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        assume(False)  # Pillow cannot write this mode in this format
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip", "random"]))
    if damage == "none":
        return data, (width, height)
    if damage == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))], None
    if damage == "flip":
        flipped = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(flipped) - 1))
            flipped[position] ^= 1 << draw(st.integers(0, 7))
        return bytes(flipped), None
    return draw(st.binary(min_size=0, max_size=2048)), None


@pytest.mark.fuzz
@given(case=image_files())
def test_any_image_file_decodes_or_is_refused_clearly(case, tmp_path_factory):
    data, size = case
    path = tmp_path_factory.mktemp("fuzz") / "image"
    path.write_bytes(data)
    try:
        img = load_rgb(path)
    except ImageLoadError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    assert img.mode == "RGB"
    if size is not None:
        assert img.size == size
    tensor = PREPROCESS(img)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == np.float32 and np.isfinite(tensor).all()


@pytest.mark.fuzz
@given(text=st.one_of(st.text(max_size=400), st.binary(max_size=400)), width=st.sampled_from([2, 3]))
def test_any_csv_gives_rows_and_messages_or_one_error(text, width, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzzcsv") / "set.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        rows, bad = read_csv(path, width)
    except SimengineError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    assert all(len(r.images) == width and r.label in (None, 0, 1) for r in rows)
    assert all(message.startswith(f"{path}:") for message in bad)


def test_the_image_fuzz_stays_within_a_memory_bound(tmp_path):
    """The image fuzz again, in a child process whose address space is capped: any case that needs more memory
    (as a 1 x 40000 strip once did, 11 GB) fails there with MemoryError."""
    import os
    import subprocess
    import sys

    cap = 3 * 2**30
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))\n"
            "import pytest\n"
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--basetemp', {str(tmp_path / 'run')!r}, "
            f"{__file__ + '::test_any_image_file_decodes_or_is_refused_clearly'!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(os.path.dirname(__file__)), env=os.environ.copy())
    assert result.returncode == 0, result.stdout[-3000:]
