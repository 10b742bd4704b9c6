"""`Engine.copies`: the indexed copies of one image, exact or edited, and not other items of its class."""

import numpy as np
import pytest

from fixtures import lite0_same_picture
from simengine.dedup.calibrate import SAME_PICTURE, same_picture_file, write_same_picture
from simengine.dedup.copies import TRANSFORMS
from simengine.errors import ImageLoadError, NotCalibratedError
from simengine.query.engine import Engine

DECISION = lite0_same_picture()


def encoded(img, fmt="JPEG") -> bytes:
    import io

    out = io.BytesIO()
    img.save(out, fmt, quality=90)
    return out.getvalue()


@pytest.fixture
def engine(index_copy):
    engine = Engine.open(index_copy)
    write_same_picture(engine.index.model_dir, same_picture_file(DECISION, {}, "test"))
    yield engine
    engine.index.close()


def test_exact_and_edited_copies_of_an_item_are_found(engine):
    from PIL import Image

    item = engine.item(3)
    exact = engine.copies(open(item["path"], "rb").read(), "same-bytes.jpg")
    assert exact.copies[0]["item_id"] == 3 and exact.copies[0]["kind"] == "exact"
    picture = Image.open(item["path"]).convert("RGB")
    edited = engine.copies(encoded(TRANSFORMS["colour"](picture, np.random.default_rng(0))), "recoloured.jpg")
    # the fixture's items of one class are crops of one photo, so they are copies too; items of other photos never
    found = [c["item_id"] for c in edited.copies]
    assert found[0] == 3 and all(c["kind"] == "near" for c in edited.copies)
    assert {engine.item(i)["label"] for i in found} == {item["label"]}
    assert edited.to_dict()["decision"] == DECISION.to_dict()


def test_bad_bytes_and_an_uncalibrated_model_are_errors(engine):
    with pytest.raises(ImageLoadError):
        engine.copies(b"not an image", "junk.jpg")
    (engine.index.model_dir / SAME_PICTURE).unlink()
    with pytest.raises(NotCalibratedError):
        engine.copies(open(engine.item(3)["path"], "rb").read())
