"""Where a build lands: the next version of the index at `out`, or a new index made beside `out` and moved there
once committed, so a failed build leaves nothing at `out`."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Callable

from simengine.errors import SimengineError
from simengine.index.model_link import create_index
from simengine.model.bundle import Model
from simengine.store import index_choice
from simengine.store.layout import CURRENT, V1_MANIFEST
from simengine.store.lock import DEFAULT_TIMEOUT_S
from simengine.store.writer import StoreWriter


def commit_build(out: Path, model: Model, in_place: bool, write: Callable[[StoreWriter], None], operation: str,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Commit what `write` stages as the next version of the index at `out` (`in_place`), or as the first version
    of a new index, built beside `out` and moved there once committed: a failed build leaves nothing at `out`."""

    def commit_into(folder: Path) -> None:
        with StoreWriter(folder, timeout_s) as writer:
            write(writer)
            writer.commit(operation)

    if in_place:
        commit_into(out)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.building-{secrets.token_hex(3)}"
    try:
        create_index(staging, model)
        commit_into(staging)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_target(out: Path, index_type: str = "auto") -> bool:
    """Fail before any slow work when the index type is unknown or `out` cannot take an index; True when `out` is an
    index already (the build becomes its next version)."""
    index_choice.check_type(index_type)
    if (out / CURRENT).is_file():
        return True
    _check_replaceable(out)
    return False


def _check_replaceable(out: Path) -> None:
    """Nothing at `out`, an empty folder, or a format-1 index (which a build replaces); anything else is refused."""
    target = out.resolve() if out.is_symlink() else out
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not (target / V1_MANIFEST).is_file():
        raise SimengineError(f"{out} exists and is not an index; choose another --out")


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished `staging` directory at `out`, where there is nothing yet, or a format-1 index: that one (a
    link to a hidden version directory) is moved aside and deleted once the new one is in place."""
    if (out / CURRENT).is_file():
        raise SimengineError(f"another build created an index at {out} meanwhile; run again to rebuild it in place")
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        try:
            os.rename(staging, out)
        except OSError as exc:
            raise SimengineError(f"{out} was created by another process meanwhile ({exc.strerror}); run the build "
                                 "again to rebuild it in place") from None
        return
    old_target = out.resolve() if out.is_symlink() else None
    aside = out.parent / f".{out.name}.replaced-{secrets.token_hex(3)}"
    os.rename(out, aside)
    os.rename(staging, out)
    if old_target is None:
        shutil.rmtree(aside, ignore_errors=True)
        return
    aside.unlink()
    if old_target.parent == out.parent.resolve():
        shutil.rmtree(old_target, ignore_errors=True)
