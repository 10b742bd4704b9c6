"""References to images in a question: a file path, or `id:N` for an indexed item."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from simengine.errors import SimengineError

ID_PREFIX = "id:"


def parse_refs(refs: Sequence[str]) -> list[str]:
    """Check that each reference is an existing file or an `id:N`; raise with the first bad one."""
    for ref in refs:
        if ref.startswith(ID_PREFIX):
            if not ref[len(ID_PREFIX):].isdigit():
                raise SimengineError(f"{ref}: an id reference is id:<number>")
        elif not Path(ref).is_file():
            raise SimengineError(f"{ref}: no such file")
    return list(refs)
