"""Collections to index: an ImageFolder dataset, any folder tree, a text file of paths, or a CSV / parquet table
whose rows name image files and carry metadata. Every form becomes the same list of `Item`s; rows and files that
cannot be used are reported with their line or path and skipped."""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from simengine.data.folders import ROW_COLUMNS, Item, scan_split
from simengine.data.labels import with_known_name
from simengine.errors import SimengineError

LABEL_MODES = ("auto", "folders", "table", "none")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
# Columns the index itself keeps: a table's metadata may not use these names.
RESERVED_COLUMNS = frozenset(ROW_COLUMNS) | {"added_version", "removed_version"}
# Metadata column names end up as SQL identifiers in --where filters: plain names only.
COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Numbers as CSV cells spell them; no leading zeros (zip codes, ids like 007 stay text) and no exponent-free giants.
INTEGER = re.compile(r"-?(0|[1-9]\d*)")
DECIMAL = re.compile(r"-?(0|[1-9]\d*)?\.\d+([eE][+-]?\d+)?|-?(0|[1-9]\d*)[eE][+-]?\d+|-?(0|[1-9]\d*)\.")
# Still-image suffixes a folder walk picks up (those Pillow can open here); videos, HDF5 and the like are not.
STILL_IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".ppm",
    ".pgm", ".pbm", ".pnm", ".pfm", ".jp2", ".j2k", ".jpx", ".jpf", ".tga", ".ico", ".pcx", ".sgi", ".rgb", ".qoi",
    ".dds", ".psd", ".avif", ".heic", ".heif",
})
# A folder holding one of these is an index or a model bundle (say, `simengine index build .`), never images.
NOT_A_COLLECTION = ("CURRENT", "heads.safetensors")


@dataclass
class Collection:
    """What a source holds: its items, what was skipped as (line or path, reason), its kind, and the paths of files
    that exist but could not be read (a sync keeps their items)."""

    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "folder"
    # Files that exist but could not be read this time, and folders (ending with a separator) that could not be listed.
    unreadable: set[str] = field(default_factory=set)
    folder_labels: bool = False  # its labels are its files' folder names (what `index add` follows)

    @property
    def labelled(self) -> bool:
        return any(item.label is not None for item in self.items)

    @property
    def metadata_columns(self) -> list[str]:
        return sorted({key for item in self.items for key in item.metadata})


def image_suffixes() -> frozenset[str]:
    """Suffixes of still-image files that Pillow (with the plugins installed here) can open."""
    from PIL import Image

    from simengine.data.decode import local_formats

    Image.init()
    openable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in local_formats()}
    return STILL_IMAGE_SUFFIXES & openable


def is_image_folder(root: Path) -> bool:
    """The `train/<class>/*.jpg` layout of an ImageFolder dataset: class folders holding images directly."""
    train = root / "train"
    if not train.is_dir():
        return False
    suffixes = image_suffixes()
    return any(p.is_dir() and any(f.suffix.lower() in suffixes for f in p.iterdir()) for p in train.iterdir())


def scan_source(source: str | os.PathLike, labels: str = "auto", splits: Iterable[str] = ("train",),
                path_column: str = "path", progress: bool = False, kind: str | None = None,
                label_names: bool = True, label_column: str | None = None) -> Collection:
    """Every image a source names, hashed. `labels`: "auto" (a table's `label` column, an ImageFolder's class
    folders, else none), "folders" (each file's folder name; a known code's name, see `data.labels`), "table" (the `label` column, required), "none".
    A folder is read as an ImageFolder dataset when it has that layout, unless `kind` (as a collection recorded it
    earlier: "imagefolder" or "folder") says how. `label_names` off keeps a known code as the label (an index
    built before labels were names syncs as it was built). `label_column` names a table's label column (default:
    the one called `label`, in any case), for a table such as a noisy-label CSV indexed as it is."""
    if labels not in LABEL_MODES:
        raise SimengineError(f"--labels must be one of {', '.join(LABEL_MODES)}, not {labels!r}")
    root = Path(source)
    if label_column is not None and not (root.is_file() and root.suffix.lower() in TABLE_SUFFIXES):
        raise SimengineError(f"{root}: --label-column names a column of a CSV or parquet table; this is not one")
    if root.is_dir():
        if labels == "table":
            raise SimengineError(f"{root} is a folder; --labels table needs a CSV or parquet table")
        layout = kind if kind in ("imagefolder", "folder") else (
            "imagefolder" if labels in ("auto", "folders") and is_image_folder(root) else "folder")
        if layout == "imagefolder":
            name = with_known_name if label_names else (lambda item: item)
            return Collection([name(item) for split in splits for item in scan_split(root, split)],
                              kind="imagefolder", folder_labels=True)
        unlisted: list[OSError] = []
        collection = _hashed(_walk(root, unlisted.append), labels == "folders", "folder", progress, label_names)
        for exc in unlisted:  # its items stay in an index a sync compares with this
            folder = str(Path(exc.filename).absolute())
            collection.skipped.append((folder, f"{folder}: cannot list this folder ({exc.strerror or exc})"))
            collection.unreadable.add(folder.rstrip(os.sep) + os.sep)
        return collection
    if not root.is_file():
        raise SimengineError(f"{root}: no such file or folder")
    suffix = root.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        rows = _parquet_rows(root) if suffix == ".parquet" else _csv_rows(root, "\t" if suffix == ".tsv" else ",")
        return _from_table(root, rows, labels, path_column, suffix.lstrip("."), progress, label_names, label_column)
    if labels == "table":
        raise SimengineError(f"{root} is a list of paths; --labels table needs a CSV or parquet table")
    return _hashed(_listed(root), labels == "folders", "list", progress, label_names)


def _walk(root: Path, on_error: Callable[[OSError], None]) -> Iterator[tuple[str, Path]]:
    """Image files under `root`, in a stable order; hidden files and folders, indexes and model bundles are skipped
    and folder links are not followed (no loops, nothing outside the tree by accident). A folder that cannot be
    listed goes to `on_error`."""
    suffixes = image_suffixes()
    for folder, dirs, files in os.walk(root, onerror=on_error):
        if any(marker in files for marker in NOT_A_COLLECTION):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                path = Path(folder, name)
                yield str(path), path


def _listed(list_file: Path) -> Iterator[tuple[str, Path]]:
    """Paths in a text file, one per line (relative ones from the file's folder); blank lines and # comments skipped."""
    with _open_text(list_file) as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError:
            raise SimengineError(f"{list_file}: not a text file of paths (to index one image, give its folder or "
                                 "use `index add`)") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield f"{list_file}:{number}", list_file.parent / line


def _hashed(found: Iterable[tuple[str, Path]], folder_labels: bool, kind: str, progress: bool,
            label_names: bool = True, extra: dict[str, tuple[str | None, dict]] | None = None) -> Collection:
    """Items for (where, path) pairs, hashed; files that cannot be read are skipped with their reason."""
    from tqdm import tqdm

    collection = Collection(items=[], kind=kind, folder_labels=folder_labels)
    for where, path in tqdm(list(found), desc="hashing", unit="file", disable=not progress):
        label, metadata = (extra or {}).get(where, (None, {}))
        named = where if where == str(path) else f"{where}: {path}"
        try:
            str(path).encode("utf-8")
            item = Item.from_file(path, label, None)
        except UnicodeEncodeError:
            collection.skipped.append((where, f"{named!r}: the file name is not valid UTF-8"))
            continue
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, on Python 3.11
            collection.skipped.append((where, f"{named}: {getattr(exc, 'strerror', None) or exc}"))
            if os.path.lexists(path):
                collection.unreadable.add(str(Path(path).absolute()))
            continue
        if folder_labels and label is None:  # the folder the user sees, not a link's target
            item = Item(item.path, Path(path).parent.name, None, item.sha256, metadata)
            item = with_known_name(item) if label_names else item
        else:
            item = Item(item.path, label, None, item.sha256, metadata)
        collection.items.append(item)
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
                    yield reader.line_num, row
            except (UnicodeDecodeError, csv.Error) as exc:
                raise SimengineError(f"{path}:{reader.line_num}: {exc}") from None

    return columns, rows()


def typed_value(text: str | None) -> Any:
    """A cell (or a --param value) as the value it spells: numbers as numbers, so `year > 2000` compares numbers;
    empty as NULL. Text that only looks numeric stays text: leading zeros (007, zip codes), integers beyond 64 bits."""
    if text is None or text == "":
        return None
    if INTEGER.fullmatch(text):
        number = int(text)
        return number if -2**63 <= number < 2**63 else text
    if DECIMAL.fullmatch(text):
        number = float(text)
        return number if math.isfinite(number) else text
    return text


def _parquet_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SimengineError("reading parquet needs pyarrow: pip install 'simengine-images[parquet]'") from None
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
    """A parquet cell as something SQLite stores the same way back: NaN as NULL, integers beyond 64 bits and dates
    as text, decimals as floats, durations as seconds, nested values as JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, default=str)


def _from_table(table: Path, table_rows: tuple[list[str], Iterator[tuple[int, dict[str, Any]]]], labels: str,
                path_column: str, kind: str, progress: bool, label_names: bool,
                label_column: str | None = None) -> Collection:
    columns, rows = table_rows
    if path_column not in columns:
        raise SimengineError(f"{table}: no {path_column!r} column (columns: {', '.join(columns) or 'none'}); "
                             "name it with --path-column")
    if label_column is not None and (label_column not in columns or label_column == path_column):
        raise SimengineError(f"{table}: no {label_column!r} column to take labels from (columns: "
                             f"{', '.join(columns)})")
    label_column = label_column or next((c for c in columns if c.lower() == "label" and c != path_column), None)
    if labels == "table" and label_column is None:
        raise SimengineError(f"{table}: --labels table needs a 'label' column")
    metadata_columns = [c for c in columns if c not in (path_column, label_column)]
    check_column_names(table, metadata_columns)
    typed = kind != "parquet"  # CSV cells are text; parquet ones have their types
    found, extra, skipped, first_line = [], {}, [], {}
    for number, row in rows:
        where = f"{table}:{number}"
        value = row.get(path_column)
        if value is None or str(value).strip() == "":
            skipped.append((where, f"{where}: empty {path_column}"))
            continue
        path = table.parent / str(value).strip()
        if (earlier := first_line.setdefault(str(Path(path).absolute()), number)) != number:
            skipped.append((where, f"{where}: {path} is already listed on line {earlier}"))
            continue
        found.append((where, path))
        label = row.get(label_column) if label_column and labels in ("auto", "table") else None
        extra[where] = (None if label in (None, "") else str(label),
                        {c.lower(): typed_value(row.get(c)) if typed else row.get(c) for c in metadata_columns})
    collection = _hashed(found, labels == "folders", kind, progress, label_names, extra)
    collection.skipped[:0] = skipped
    return collection


def check_column_names(table: Path, columns: list[str]) -> None:
    """Metadata column names become SQLite columns: plain names only, none of the index's own, no two alike."""
    seen: set[str] = set()
    for column in columns:
        if not COLUMN_NAME.fullmatch(column):
            raise SimengineError(f"{table}: column name {column!r} is not a plain name (letters, digits, _)")
        if column.lower() in RESERVED_COLUMNS:
            raise SimengineError(f"{table}: column {column!r} is kept by the index itself; rename it")
        if column.lower() in seen:
            raise SimengineError(f"{table}: two columns named {column!r} (names are case-insensitive)")
        seen.add(column.lower())
