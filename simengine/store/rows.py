"""The SQLite side of a store: one row per item ever added, stamped with the versions that added and removed it.

A reader at version V sees the rows with `added_version <= V` and no `removed_version <= V`, so one database
serves every version a reader may hold, and a write touches only the rows it changes. The store knows the id and
the stamps; the columns are the caller's (fixed ones declared at `create`, others added as rows bring them).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from simengine.errors import IndexUnusableError, SimengineError

ITEMS_DB = "items.db"
SCHEMA_VERSION = 2
VERSION_STAMPS = ("added_version", "removed_version")
BUSY_TIMEOUT_MS = 30_000
REMOVED_IDS = "SELECT id FROM items WHERE removed_version <= ?"
MAX_ID = 2**63 - 1  # ids are SQLite integers and FAISS int64 labels
FILTER_TIMEOUT_S = 10.0
# A filter may call SQL functions, but none that reads files or builds huge values.
# printf and format: a large width pads for seconds inside one call, beyond the length limit's reach.
DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "randomblob",
                              "zeroblob", "printf", "format"})
# The progress handler runs between SQLite's steps, never inside one function call, so one call's cost is bounded by
# its inputs: no value over 100 KB and no LIKE/GLOB pattern over 256 bytes (a 10,000-byte pattern against a 531 KB
# string ran for a minute inside one LIKE).
FILTER_MAX_VALUE_BYTES = 100_000
FILTER_MAX_PATTERN_BYTES = 256
LIVE_VIEW = "live_items_at"
# The live-rows view's name ends with this process's secret: a condition can neither name it nor give a CTE of its own
# that name, and reads of the items table are allowed only through the view of that exact name.
_VIEW_SECRET = secrets.token_hex(8)


def live_view(version: int) -> str:
    """The name of the temporary view of the rows live at `version` that a filter condition reads."""
    return f"{LIVE_VIEW}_{int(version)}_{_VIEW_SECRET}"


def live_condition(version: int) -> tuple[str, list[int]]:
    """The SQL condition (and its parameters) that selects the rows live at `version`."""
    return "added_version <= ? AND (removed_version IS NULL OR removed_version > ?)", [version, version]


def connect(folder: Path, read_only: bool = False, create: bool = False) -> sqlite3.Connection:
    """A connection to `folder/items.db`, which must exist unless `create`; read-only ones never change a byte of it."""
    path = Path(folder) / ITEMS_DB
    if not create and not path.is_file():
        raise IndexUnusableError(f"{path}: missing")
    mode = "ro" if read_only else "rwc" if create else "rw"
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    return conn


def column_names(conn: sqlite3.Connection) -> list[str]:
    """The items table's columns, in order, the version stamps included."""
    return [r[0] for r in conn.execute("SELECT name FROM pragma_table_info('items')")]


def identity(folder: Path) -> tuple[int, int] | None:
    """Which file `folder/items.db` is (device, inode): a connection stays with the file it opened."""
    try:
        st = (Path(folder) / ITEMS_DB).stat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def create(conn: sqlite3.Connection, columns: dict[str, type], not_null: Sequence[str] = (),
           indexed: Sequence[str] = ()) -> None:
    """The items table: an integer id, the caller's fixed `columns` (name: Python type), and the version stamps."""
    import sqlite_utils

    if clash := {"id", *VERSION_STAMPS} & set(columns):
        raise ValueError(f"column {sorted(clash)[0]!r} belongs to the store")
    db = sqlite_utils.Database(conn)
    with conn:
        db["items"].create({"id": int, **columns, "added_version": int, "removed_version": int},
                           pk="id", not_null={*not_null, "added_version"})
        for column in (*indexed, "added_version", "removed_version"):
            db["items"].create_index([column])
        db["meta"].insert({"key": "schema_version", "value": str(SCHEMA_VERSION)}, pk="key")


def _rows(cursor: Iterable[sqlite3.Row]) -> list[dict[str, Any]]:
    """Rows as dicts: the fixed columns and any metadata columns a table brought, without the version stamps."""
    return [{k: row[k] for k in row.keys() if k not in VERSION_STAMPS} for row in cursor]


def _live_in(conn: sqlite3.Connection, version: int, select: str, column: str, values: list) -> Iterator[sqlite3.Row]:
    """`SELECT select FROM items WHERE column IN values`, live at `version`, in chunks under SQLite's
    bound-parameter limit."""
    where, args = live_condition(version)
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        marks = ",".join("?" * len(chunk))
        yield from conn.execute(f"SELECT {select} FROM items WHERE {column} IN ({marks}) AND {where}", chunk + args)


def get(conn: sqlite3.Connection, version: int, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Rows of the live items among `ids` at `version` (ids outside int64, which no item has, are simply absent)."""
    ids = [int(i) for i in ids if 0 <= int(i) <= MAX_ID]
    return {row["id"]: row for row in _rows(_live_in(conn, version, "*", "id", ids))}


def ids_where(conn: sqlite3.Connection, version: int, where: str, params: dict[str, Any] | None = None,
              timeout_s: float = FILTER_TIMEOUT_S) -> np.ndarray:
    """Ids of the live items at `version` for which the SQL condition `where` holds, e.g. "label = :l AND width >
    200" with params {"l": "tench"}. Values only ever come as bound parameters. The condition sees the live
    rows only (a view; the items table itself cannot be read), may not write or read anything else, builds no
    value over 100 KB nor LIKE/GLOB pattern over 256 bytes, and runs for at most `timeout_s`."""
    params = dict(params or {})
    if bad := [k for k, v in params.items() if not isinstance(v, (str, int, float, bytes, type(None)))]:
        raise SimengineError(f"parameter {bad[0]!r}: only text, numbers, bytes or None can be bound")
    live = live_condition(int(version))[0].replace("?", str(int(version)))
    view = live_view(version)
    conn.execute(f"CREATE TEMP VIEW IF NOT EXISTS {view} AS SELECT * FROM items WHERE {live}")
    deadline = time.monotonic() + timeout_s
    limits = {sqlite3.SQLITE_LIMIT_LENGTH: FILTER_MAX_VALUE_BYTES,
              sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: FILTER_MAX_PATTERN_BYTES}
    before = {limit: conn.setlimit(limit, value) for limit, value in limits.items()}
    conn.set_authorizer(_filter_authorizer(view))
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        selected = [r[0] for r in conn.execute(f"SELECT id FROM {view} WHERE ({where}\n)", params)]
    except sqlite3.Error as exc:
        reason = f"took longer than {timeout_s:g} s" if "interrupted" in str(exc) else " ".join(str(exc).split())
        raise SimengineError(f"--where {where!r}: {reason}") from None
    except (sqlite3.Warning, OverflowError) as exc:  # several statements; a Python int beyond 64 bits
        raise SimengineError(f"--where {where!r}: {exc}") from None
    finally:
        conn.set_authorizer(None)
        conn.set_progress_handler(None, 0)
        for limit, value in before.items():
            conn.setlimit(limit, value)
    if any(type(i) is not int or not 0 <= i <= MAX_ID for i in selected):
        raise SimengineError(f"--where {where!r}: the condition must select items, not make up values")
    return np.unique(np.array(selected, np.int64))


def _filter_authorizer(view: str):
    """Allow a condition to select, call harmless functions and read the live rows through `view`, nothing else."""

    def authorize(action: int, arg1: str | None, arg2: str | None, database: str | None, source: str | None) -> int:
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        # The items table is read only through the live-rows view, so removed rows stay out of reach. `source` names
        # the view or CTE whose body reads: a CTE could take a name like the view's, hence its secret suffix.
        if action == sqlite3.SQLITE_READ and (
                (database == "main" and arg1 == "items" and source == view) or (database == "temp" and arg1 == view)):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() not in DENIED_FUNCTIONS:
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    return authorize


def live_rows(conn: sqlite3.Connection, version: int) -> list[dict[str, Any]]:
    """Every live row at `version`."""
    where, args = live_condition(version)
    return _rows(conn.execute(f"SELECT * FROM items WHERE {where}", args))


def live_ids(conn: sqlite3.Connection, version: int) -> np.ndarray:
    where, args = live_condition(version)
    return np.array([r[0] for r in conn.execute(f"SELECT id FROM items WHERE {where}", args)], np.int64)


def removed_ids(conn: sqlite3.Connection, version: int) -> np.ndarray:
    """Ids removed at or before `version` whose rows are kept (their vectors may still sit in segments)."""
    # Sorted here, not by SQL: ORDER BY id would make SQLite scan every row instead of the removed_version index.
    cur = conn.execute(REMOVED_IDS, [version])
    return np.sort(np.array([r[0] for r in cur], np.int64))


def live_ids_by(conn: sqlite3.Connection, version: int, column: str, values: Sequence[Any]) -> dict[Any, int]:
    """{value: id} of live items whose `column` holds one of `values` (a column whose live values are unique)."""
    return {row[0]: row[1] for row in _live_in(conn, version, f'"{column}", id', f'"{column}"', list(values))}


def live_ids_with(conn: sqlite3.Connection, version: int, column: str, value: Any) -> list[int]:
    """Ids of the live items whose `column` equals `value`."""
    where, args = live_condition(version)
    return [r[0] for r in conn.execute(f'SELECT id FROM items WHERE "{column}" = ? AND {where}', [value] + args)]


def count_by(conn: sqlite3.Connection, version: int, column: str) -> dict[Any, int]:
    """How many live items hold each value of `column`, in the column's order."""
    where, args = live_condition(version)
    cur = conn.execute(f'SELECT "{column}", count(*) FROM items WHERE {where} GROUP BY "{column}" ORDER BY "{column}"',
                       args)
    return {row[0]: row[1] for row in cur}


def insert(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]], version: int) -> None:
    """Insert `rows` stamped with `version`, in one transaction: one commit (one fsync) per call, not per batch."""
    _add_metadata_columns(conn, rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    names = ", ".join(f'"{c}"' for c in columns + ["added_version"])
    sql = f"INSERT INTO items ({names}) VALUES ({', '.join('?' * (len(columns) + 1))})"
    with conn:
        conn.executemany(sql, ([_sql_value(row.get(c)) for c in columns] + [version] for row in rows))


def _sql_value(value: Any) -> Any:
    """Lists and dicts as JSON text (as sqlite-utils stores them); anything else as sqlite3 binds it."""
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


def _add_metadata_columns(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    """A column for every metadata key the table lacks, declared without a type: SQLite then keeps each value as
    given (numbers stay numbers for --where comparisons, whatever the first rows held)."""
    existing = {name.lower() for name in column_names(conn)}
    new = {key.lower() for row in rows for key in row} - existing
    for name in sorted(new):
        conn.execute(f'ALTER TABLE items ADD COLUMN "{name}"')


def mark_removed(conn: sqlite3.Connection, ids: Sequence[int], version: int) -> None:
    conn.executemany("UPDATE items SET removed_version = ? WHERE id = ? AND removed_version IS NULL",
                     [(version, int(i)) for i in ids])


def roll_back_after(conn: sqlite3.Connection, version: int) -> int:
    """Undo what an uncommitted writer left beyond `version` (it crashed before its commit); returns rows touched."""
    with conn:
        added = conn.execute("DELETE FROM items WHERE added_version > ?", [version]).rowcount
        removed = conn.execute("UPDATE items SET removed_version = NULL WHERE removed_version > ?", [version]).rowcount
    return added + removed


def purge_removed(conn: sqlite3.Connection, through_version: int) -> int:
    """Forget items removed at or before a version whose vectors no retained segment holds."""
    with conn:
        return conn.execute("DELETE FROM items WHERE removed_version <= ?", [through_version]).rowcount
