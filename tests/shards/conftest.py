import shutil

import pytest


@pytest.fixture(scope="module")
def images(fixture_data, tmp_path_factory):
    """The fixture's 32 train images in their class folders, plus one corrupt file."""
    root = tmp_path_factory.mktemp("collection") / "photos"
    shutil.copytree(fixture_data / "train", root)
    (root / "coffee" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return root
