"""The on-disk layout of a store: one self-contained directory holding every version, LevelDB-style.

    <store>/CURRENT                    the name of the live manifest (replaced atomically: the commit point)
    <store>/manifests/v00000012.json   one per version: segments, counts, next id, and the JSON metadata of the
                                       layer above (an index keeps its model identity and calibration there)
    <store>/segments/*.faiss           immutable FAISS files, shared by the versions that list them
    <store>/items.db                   SQLite rows stamped with the versions that added and removed them
    <store>/model/, models/<digest>/   the attached directory (immutable; an index attaches its model bundle); each
                                       manifest names its own under the key `model_dir`
    <store>/LOCK, LOCK.holder          the writer lock (see lock.py)

Every path inside is relative, so `cp -r`, `rsync`, `tar` and `mv` give a working, independent index.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from simengine.errors import IndexUnusableError
from simengine.files import sha256_file, write_durably

FORMAT_VERSION = 2
CURRENT = "CURRENT"
MANIFESTS = "manifests"
SEGMENTS = "segments"
ATTACHED = "model"  # the first attached directory; later ones (a rebuild with another model) go under ATTACHED_BY_DIGEST
ATTACHED_BY_DIGEST = "models"
V1_MANIFEST = "manifest.json"
DEFAULT_ROOT = Path("indexes")
# Old versions stay readable this long after they were replaced, for readers that opened them just before.
GRACE_S = 600.0
# What a manifest must hold for the store, with the types its readers rely on (the layer above checks its own keys).
MANIFEST_FIELDS = {"index_uuid": str, "model_dir": str, "dim": int, "next_id": int, "segments": list, "counts": dict,
                   "compacted_at": int, "index_type": str, "committed_unix": float}
SEGMENT_FIELDS = {"file": str, "type": str, "vectors": int, "bytes": int, "sha256": str, "id_min": int, "id_max": int}


def manifest_name(version: int) -> str:
    return f"v{version:08d}.json"


def version_of(name: str) -> int:
    return int(name[1:9])



class StoreDir:
    """Paths and the version pointer of one store directory; holds no open files."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def attached_dir(self, manifest: dict[str, Any]) -> Path:
        """The directory attached to the version of `manifest` (an index's model bundle)."""
        return self.root / manifest["model_dir"]

    def segment_path(self, name: str) -> Path:
        return self.root / SEGMENTS / name

    def manifest_path(self, version: int) -> Path:
        return self.root / MANIFESTS / manifest_name(version)

    def require_format(self) -> None:
        """Raise one clear line for anything that is not a format-2 index."""
        if (self.root / CURRENT).is_file():
            return
        if (self.root / V1_MANIFEST).is_file():
            raise IndexUnusableError(
                f"{self.root}: index format 1 (simengine 0.1), which this version cannot write safely; rebuild it with "
                f"`simengine index build --out {self.root} --model {self.root / ATTACHED} ...`")
        raise IndexUnusableError(f"{self.root}: no index here (no {CURRENT} file)")

    def current_version(self) -> int:
        self.require_format()
        raw = (self.root / CURRENT).read_bytes()
        try:
            return version_of(raw.decode().strip())
        except (ValueError, UnicodeDecodeError):
            raise IndexUnusableError(f"{self.root / CURRENT}: names no manifest ({raw[:40]!r})") from None

    def current_token(self) -> tuple:
        """Changes on every commit (the version it names only grows) and when another index is put at this path."""
        with open(self.root / CURRENT, "rb") as fh:
            st = os.fstat(fh.fileno())
            return st.st_dev, st.st_ino, st.st_mtime_ns, fh.read(64)

    def read_manifest(self, version: int) -> dict[str, Any]:
        path = self.manifest_path(version)
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise IndexUnusableError(f"{path}: missing (the live version's manifest)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexUnusableError(f"{path}: corrupt ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION \
                or manifest.get("version") != version:
            raise IndexUnusableError(f"{path}: not a format-{FORMAT_VERSION} manifest of version {version}")
        for fields, record in [(MANIFEST_FIELDS, manifest)] + [(SEGMENT_FIELDS, s) for s in manifest.get("segments", [])]:
            if not isinstance(record, dict):
                raise IndexUnusableError(f"{path}: a segment is not an object")
            for key, kind in fields.items():
                if not isinstance(record.get(key), kind if kind is not float else (int, float)):
                    raise IndexUnusableError(f"{path}: {key!r} missing or not {kind.__name__}")
        bounds = [(s["id_min"], s["id_max"]) for s in manifest["segments"]]
        if any(lo > hi for lo, hi in bounds) or any(a[1] >= b[0] for a, b in zip(bounds, bounds[1:])):
            raise IndexUnusableError(f"{path}: segment id ranges overlap or are out of order")  # lookups bisect them
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_durably(self.manifest_path(manifest["version"]), json.dumps(manifest, indent=1).encode())

    def point_current_at(self, version: int) -> None:
        write_durably(self.root / CURRENT, (manifest_name(version) + "\n").encode())

    def manifest_versions(self) -> list[int]:
        folder = self.root / MANIFESTS
        found = []
        for path in folder.glob("v*.json") if folder.is_dir() else []:
            try:
                found.append(version_of(path.name))
            except ValueError:
                continue
        return sorted(found)

    def new_segment_name(self, version: int) -> str:
        return f"s{version:08d}-{secrets.token_hex(3)}.faiss"

    def segment_record(self, name: str, kind: str, ids) -> dict[str, Any]:
        path = self.segment_path(name)
        return {"file": name, "type": kind, "vectors": int(len(ids)),
                "id_min": int(ids.min()) if len(ids) else None, "id_max": int(ids.max()) if len(ids) else None,
                "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def resolve_index_dir(index: str | os.PathLike | None = None, root: Path = DEFAULT_ROOT) -> Path:
    """--index DIR, else indexes/default, else the only index under indexes/."""
    if index is not None:
        path = Path(index)
        StoreDir(path).require_format()
        return path
    if is_index_dir(root / "default"):
        StoreDir(root / "default").require_format()
        return root / "default"
    found = index_dirs(root)
    if len(found) == 1:
        StoreDir(found[0]).require_format()
        return found[0]
    if not found:
        raise IndexUnusableError(f"no index found under {root}/: build one with `simengine index build PHOTOS`")
    raise IndexUnusableError(f"several indexes under {root}/ ({', '.join(p.name for p in found)}): choose one with --index")


def is_index_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is an index directory (of any format: an old one is then refused with how to rebuild it)."""
    path = Path(path)
    return (path / CURRENT).is_file() or (path / V1_MANIFEST).is_file()


def index_dirs(root: Path = DEFAULT_ROOT) -> list[Path]:
    """The indexes directly under `root` (hidden folders left out)."""
    return [p for p in sorted(root.glob("*")) if not p.name.startswith(".") and is_index_dir(p)] if root.is_dir() else []


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
