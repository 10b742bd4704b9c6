"""References to images in a question: a file path, or `id:N` for an indexed item."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from simengine.errors import SimengineError
from simengine.index.items_db import MAX_ID

ID_PREFIX = "id:"


def parse_id(ref: str) -> int:
    """The item id of an `id:N` reference; a clear error for anything that cannot be one."""
    digits = ref[len(ID_PREFIX):]
    if not (digits.isascii() and digits.isdigit()):
        raise SimengineError(f"{ref}: an id reference is id:<number>")
    if len(digits) > 19 or int(digits) > MAX_ID:
        raise SimengineError(f"{ref}: no such item (ids are below 2**63)")
    return int(digits)


def parse_refs(refs: Sequence[str]) -> list[str]:
    """Check that each reference is an existing file or a well-formed `id:N`; raise with the first bad one."""
    for ref in refs:
        if ref.startswith(ID_PREFIX):
            parse_id(ref)
        elif not Path(ref).is_file():
            raise SimengineError(f"{ref}: no such file")
    return list(refs)
