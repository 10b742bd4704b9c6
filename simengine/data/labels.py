"""What people call a label. A class folder named by a code that a dataset importer knows (Imagenette's WordNet
ids, `data.imagenette`) is indexed under its name, "tench", with the code kept as the metadata column `wnid`; so a
filter, an output, the page and the JSON all show the same value. Every other label is its own name."""

from __future__ import annotations

import dataclasses

from simengine.data.folders import Item
from simengine.data.imagenette import IMAGENETTE_CLASSES

KNOWN_NAMES: dict[str, str] = dict(IMAGENETTE_CLASSES)
CODE_COLUMN = "wnid"


def with_known_name(item: Item) -> Item:
    """`item` with a folder label that is a known code replaced by its name, the code moved to `CODE_COLUMN`."""
    if item.label not in KNOWN_NAMES:
        return item
    return dataclasses.replace(item, label=KNOWN_NAMES[item.label], metadata={**item.metadata, CODE_COLUMN: item.label})
