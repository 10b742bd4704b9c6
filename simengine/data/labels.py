"""What people call a label. Datasets whose class folders are codes are named by the module that imports them
(Imagenette's WordNet ids, `data.imagenette`); every other label is its own name."""

from __future__ import annotations

from simengine.data.imagenette import IMAGENETTE_CLASSES

KNOWN_NAMES: dict[str, str] = dict(IMAGENETTE_CLASSES)


def display_name(label: str) -> str:
    """The name to show for a stored label."""
    return KNOWN_NAMES.get(label, label)
