"""The ground floor for files: content hashes, crash-safe writes, and where derived data is cached.

Every layer may import this module; of simengine's, it imports only `errors`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path

from simengine.errors import SimengineError

# Temporary files of `write_durably` end with this; whoever owns a folder may delete leftovers of a crash.
TMP_SUFFIX = ".tmp"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file's bytes: the identity of images, weights, bundles and index files. Anything else
    (a FIFO, a device) raises OSError at once: it is opened without blocking, so a FIFO named like an image never
    hangs a scan waiting for a writer."""
    digest = hashlib.sha256()
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write `path` so that it either has all of `data` or does not change, even across a crash."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def move_no_replace(source: Path, target: Path) -> None:
    """Move a file (a link as the link) to `target`, which must not exist: FileExistsError if it does, whenever it
    appeared, so a file written there meanwhile is never overwritten (a rename would replace it). A hard link then an
    unlink within one file system; across file systems, an exclusive create and a copy. FileNotFoundError when
    `source` is gone, also when another process moved it first; whenever `source` cannot be removed, what was made
    at `target` is removed again, so a failed move leaves the one file where it was."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        _copy_no_replace(source, target)
    try:
        os.unlink(source)
    except OSError:  # moved by someone else between the link and now (theirs is the move), or not removable
        target.unlink(missing_ok=True)
        raise


def _copy_no_replace(source: Path, target: Path) -> None:
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
        return
    created = False
    try:
        with open(source, "rb") as src, open(target, "xb") as dst:
            created = True
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copystat(source, target)
    except BaseException:
        if created:  # only ours: a file another process made there meanwhile stays
            target.unlink(missing_ok=True)
        raise


def check_output_folders(*paths: str | os.PathLike | None) -> None:
    """Refuse output files whose folder does not exist, before any slow work."""
    for output in paths:
        if output and not Path(output).absolute().parent.is_dir():
            raise SimengineError(f"{output}: its folder does not exist")


def cache_dir() -> Path:
    """Where derived data that can always be rebuilt (features, exported graphs) lives: $SIMENGINE_CACHE, else
    $XDG_CACHE_HOME/simengine, else ~/.cache/simengine."""
    if env := os.environ.get("SIMENGINE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "simengine"
