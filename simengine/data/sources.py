"""Collections to index: an ImageFolder dataset, any folder tree, a text file of paths, or a CSV / parquet table
whose rows name image files and carry metadata. Every form becomes the same list of `Item`s; rows and files that
cannot be used are reported with their line or path and skipped."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from simengine.data.folders import ROW_COLUMNS, Item, scan_split
from simengine.errors import SimengineError

LABEL_MODES = ("auto", "folders", "table", "none")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
# Columns the index itself keeps: a table's metadata may not use these names.
RESERVED_COLUMNS = frozenset(ROW_COLUMNS) | {"added_version", "removed_version"}
# Metadata column names end up as SQL identifiers in --where filters: plain names only.
COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Pillow opens these only through Ghostscript, an interpreter: never run on whatever a folder holds.
GHOSTSCRIPT_SUFFIXES = frozenset({".eps", ".epsf", ".epsi", ".ps"})


@dataclass
class Collection:
    """What a source holds: its items, what was skipped as (line or path, reason), and its kind."""

    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "folder"

    @property
    def labelled(self) -> bool:
        return any(item.label is not None for item in self.items)

    @property
    def metadata_columns(self) -> list[str]:
        return sorted({key for item in self.items for key in item.metadata})


def image_suffixes() -> frozenset[str]:
    """File suffixes of every format Pillow can open (without the Ghostscript ones)."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN) - GHOSTSCRIPT_SUFFIXES


def is_image_folder(root: Path) -> bool:
    """The `train/<class>/*` layout of an ImageFolder dataset."""
    train = root / "train"
    return train.is_dir() and any(p.is_dir() for p in train.iterdir())


def scan_source(source: str | os.PathLike, labels: str = "auto", splits: Iterable[str] = ("train",),
                path_column: str = "path", progress: bool = False) -> Collection:
    """Every image a source names, hashed. `labels`: "auto" (a table's `label` column, an ImageFolder's class
    folders, else none), "folders" (each file's folder name), "table" (the `label` column, required), "none"."""
    if labels not in LABEL_MODES:
        raise SimengineError(f"--labels must be one of {', '.join(LABEL_MODES)}, not {labels!r}")
    root = Path(source)
    if root.is_dir():
        if labels == "table":
            raise SimengineError(f"{root} is a folder; --labels table needs a CSV or parquet table")
        if labels in ("auto", "folders") and is_image_folder(root):
            return Collection([item for split in splits for item in scan_split(root, split)], kind="imagefolder")
        return _hashed(_walk(root), labels == "folders", "folder", progress)
    if not root.is_file():
        raise SimengineError(f"{root}: no such file or folder")
    suffix = root.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        rows = _parquet_rows(root) if suffix == ".parquet" else _csv_rows(root, "\t" if suffix == ".tsv" else ",")
        return _from_table(root, rows, labels, path_column, suffix.lstrip("."), progress)
    if labels == "table":
        raise SimengineError(f"{root} is a list of paths; --labels table needs a CSV or parquet table")
    return _hashed(_listed(root), labels == "folders", "list", progress)


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """Image files under `root`, in a stable order; hidden files and folders are skipped and folder links are not
    followed (no loops, nothing outside the tree by accident)."""
    suffixes = image_suffixes()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                path = Path(folder, name)
                yield str(path), path


def _listed(list_file: Path) -> Iterator[tuple[str, Path]]:
    """Paths in a text file, one per line (relative ones from the file's folder); blank lines and # comments skipped."""
    with _open_text(list_file) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield f"{list_file}:{number}", list_file.parent / line


def _hashed(found: Iterable[tuple[str, Path]], folder_labels: bool, kind: str, progress: bool,
            extra: dict[str, tuple[str | None, dict]] | None = None) -> Collection:
    """Items for (where, path) pairs, hashed; files that cannot be read are skipped with their reason."""
    from tqdm import tqdm

    collection = Collection(items=[], kind=kind)
    for where, path in tqdm(list(found), desc="hashing", unit="file", disable=not progress):
        label, metadata = (extra or {}).get(where, (None, {}))
        try:
            item = Item.from_file(path, label, None)
        except OSError as exc:
            collection.skipped.append((where, f"{where}: {path}: {exc.strerror or exc}"))
            continue
        if folder_labels and label is None:
            label = item.path.parent.name
        collection.items.append(Item(item.path, label, None, item.sha256, metadata))
    return collection


def _open_text(path: Path):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SimengineError(f"{path}: {exc.strerror}") from None


def _csv_rows(path: Path, delimiter: str) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    f = _open_text(path)
    try:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as exc:
        f.close()
        raise SimengineError(f"{path}: not a readable table ({exc})") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with f:
            try:
                for row in reader:
                    if None in row:
                        raise SimengineError(f"{path}:{reader.line_num}: more fields than the header has")
                    yield reader.line_num, {k: _typed(v) for k, v in row.items()}
            except (UnicodeDecodeError, csv.Error) as exc:
                raise SimengineError(f"{path}:{reader.line_num}: {exc}") from None

    return columns, rows()


def _typed(text: str | None) -> Any:
    """A CSV cell as the value it spells: numbers as numbers (so `width > 200` compares numbers), empty as NULL."""
    if text is None or text == "":
        return None
    if NUMBER.fullmatch(text):
        number = float(text)
        if number.is_integer() and re.fullmatch(r"[+-]?\d+", text) and abs(number) < 2**63:
            return int(text)
        return number if math.isfinite(number) else text
    return text


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SimengineError("reading parquet needs pyarrow: pip install 'simengine[parquet]'") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own types (ArrowInvalid, OSError) for damaged files
        raise SimengineError(f"{path}: not a readable parquet file ({exc})") from None

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        number = 0
        for batch in table.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                number += 1
                yield number, {k: _sql_value(v) for k, v in row.items()}

    return table.schema_arrow.names, rows()


def _sql_value(value: Any) -> Any:
    """A parquet cell as something SQLite stores: dates as ISO text, nested values as JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, default=str)


def _from_table(table: Path, table_rows: tuple[list[str], Iterator[tuple[int, dict[str, Any]]]], labels: str,
                path_column: str, kind: str, progress: bool) -> Collection:
    columns, rows = table_rows
    if path_column not in columns:
        raise SimengineError(f"{table}: no {path_column!r} column (columns: {', '.join(columns) or 'none'}); "
                             "name it with --path-column")
    if labels == "table" and "label" not in columns:
        raise SimengineError(f"{table}: --labels table needs a 'label' column")
    metadata_columns = [c for c in columns if c not in (path_column, "label")]
    _check_column_names(table, metadata_columns)
    found, extra, skipped = [], {}, []
    for number, row in rows:
        where = f"{table}:{number}"
        value = row.get(path_column)
        if value is None or str(value).strip() == "":
            skipped.append((where, f"{where}: empty {path_column}"))
            continue
        found.append((where, table.parent / str(value).strip()))
        label = row.get("label") if labels in ("auto", "table") else None
        extra[where] = (None if label is None else str(label), {c: row.get(c) for c in metadata_columns})
    collection = _hashed(found, labels == "folders", kind, progress, extra)
    collection.skipped[:0] = skipped
    return collection


def _check_column_names(table: Path, columns: list[str]) -> None:
    seen: set[str] = set()
    for column in columns:
        if not COLUMN_NAME.fullmatch(column):
            raise SimengineError(f"{table}: column name {column!r} is not a plain name (letters, digits, _)")
        if column.lower() in RESERVED_COLUMNS:
            raise SimengineError(f"{table}: column {column!r} is kept by the index itself; rename it")
        if column.lower() in seen:
            raise SimengineError(f"{table}: two columns named {column!r} (names are case-insensitive)")
        seen.add(column.lower())
