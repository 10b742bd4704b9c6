"""References to images in a question: a file path, `id:N` for an indexed item, or an image embedded already."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from simengine.data.decode import not_a_file_reason
from simengine.errors import SimengineError
from simengine.index.items import ID_PREFIX, parse_id


@dataclass(frozen=True, eq=False)
class Embedded:
    """An image embedded before the question reached the engine (the service embeds uploads from many requests
    together): the name results show for it, its embedding, and the hash of the model that made it."""

    name: str
    vector: np.ndarray
    model_hash: str


def parse_refs(refs: Sequence[str]) -> list[str]:
    """Check that each reference is an existing file or a well-formed `id:N`; raise with the first bad one."""
    for ref in refs:
        if ref.startswith(ID_PREFIX):
            parse_id(ref)
        elif (reason := not_a_file_reason(ref)) is not None:  # a folder or a FIFO is named as what it is
            raise SimengineError(f"{ref}: {reason}")
    return list(refs)
