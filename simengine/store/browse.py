"""Paging through a version's live rows with typed filters: what a gallery asks of the store.

A remote client never sends SQL. It names columns, which must be the table's own, and operators from a fixed set;
every value is bound. So the conditions here need none of the sandboxing that `rows.ids_where` gives a caller's
own SQL text.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from simengine.errors import SimengineError
from simengine.store import rows

OPERATORS = ("eq", "ne", "min", "max", "contains", "in", "missing", "present")
MAX_PAGE = 500
MAX_IN_VALUES = 200_000  # "in": a selection made on the map, say
MAX_VALUE_CHARS = 256
FEW_VALUES = 50
COLOURS = 11  # a map colours its points by the commonest values of a column, then one colour for "other"  # a text column with at most this many distinct live values gets a list of them with counts


@dataclass(frozen=True)
class Filter:
    """`column` `op` `value`: eq / ne (a value, None for no value), min / max (bounds, inclusive), contains (text),
    in (a list of values), missing / present (no value needed)."""

    column: str
    op: str
    value: Any = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Filter":
        if not isinstance(d, dict) or set(d) - {"column", "op", "value"} or "column" not in d or "op" not in d:
            raise SimengineError("a filter is {'column': NAME, 'op': OPERATOR, 'value': VALUE}")
        return cls(str(d["column"]), str(d["op"]), d.get("value"))


@dataclass(frozen=True)
class Page:
    total: int  # live rows the filters select
    offset: int
    rows: list[dict[str, Any]]


def page(conn: sqlite3.Connection, version: int, filters: Sequence[Filter] = (), sort: str = "id",
         descending: bool = False, offset: int = 0, limit: int = 60) -> Page:
    """Rows `offset` to `offset + limit` of the live rows at `version` that every filter selects, ordered by `sort`
    (ties, and rows without a value, by id), with how many there are in all."""
    if not 0 < limit <= MAX_PAGE:
        raise SimengineError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if offset < 0:
        raise SimengineError(f"offset must not be negative, got {offset}")
    known = _columns(conn)
    sort = _column(sort, known)
    where, args = _conditions(filters, known, version)
    total = conn.execute(f"SELECT count(*) FROM items WHERE {where}", args).fetchone()[0]
    direction = "DESC" if descending else "ASC"
    order = f"id {direction}" if sort == "id" else f'"{sort}" IS NULL, "{sort}" {direction}, id {direction}'
    cursor = conn.execute(f"SELECT * FROM items WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                          args + [limit, offset])
    return Page(total, offset, rows._rows(cursor))


def column_summary(conn: sqlite3.Connection, version: int, skip: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Each column but the store's own and `skip`: its name, its kind ("number" when every live value is one, else
    "text"), how many live rows lack a value; with the bounds of a number column, and the values with their counts
    of a text column that has at most FEW_VALUES distinct ones, some of them repeated. Columns without any value are
    left out."""
    live, args = rows.live_condition(version)
    names = [n for n in _columns(conn).values() if n not in rows.VERSION_STAMPS and n != "id" and n not in skip]
    if not names:
        return []
    # One scan for every column's counts and bounds (numbers compare below text in SQLite: min/max are kept only for
    # a column whose values are all numbers).
    parts = [f'count("{n}"), sum(typeof("{n}") IN (\'integer\', \'real\')), min("{n}"), max("{n}")' for n in names]
    found = conn.execute(f"SELECT count(*), {', '.join(parts)} FROM items WHERE {live}", args).fetchone()
    total, out = found[0], []
    for n, name in enumerate(names):
        present, numbers, low, high = found[1 + 4 * n: 5 + 4 * n]
        if not present:
            continue
        kind = "number" if numbers == present else "text"
        summary: dict[str, Any] = {"name": name, "kind": kind, "missing": total - present}
        if kind == "number":
            summary.update(min=low, max=high)
        elif _few_values(conn, name, live, args):
            values = conn.execute(f'SELECT "{name}", count(*) FROM items WHERE "{name}" IS NOT NULL AND {live} '
                                  f'GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {FEW_VALUES + 1}', args).fetchall()
            if len(values) <= FEW_VALUES and any(c > 1 for _, c in values):  # not a column of unique names
                summary["values"] = [[v, c] for v, c in values]
        out.append(summary)
    return out


def _few_values(conn: sqlite3.Connection, name: str, live: str, args: list) -> bool:
    """Whether a column may have few distinct values: its first 5,000 live values have at most FEW_VALUES. Paths
    and hashes fail at once, without grouping every row."""
    found = conn.execute(f'SELECT count(DISTINCT "{name}") FROM (SELECT "{name}" FROM items WHERE {live} LIMIT 5000)',
                         args).fetchone()[0]
    return found <= FEW_VALUES


def value_codes(conn: sqlite3.Connection, version: int, column: str) -> dict[str, Any]:
    """Every live row's value of `column`, ids ascending, as a code into `names`: the COLOURS commonest values in
    order, then "other" for the rest; -1 for no value."""
    column = _column(column, _columns(conn))
    live, args = rows.live_condition(version)
    found = conn.execute(f'SELECT id, "{column}" FROM items WHERE {live} ORDER BY id', args).fetchall()
    counts: dict[Any, int] = {}
    for _, value in found:
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    common = sorted(counts, key=lambda v: (-counts[v], str(v)))[:COLOURS]
    names = [str(v) for v in common] + (["other"] if len(counts) > COLOURS else [])
    code = {v: n for n, v in enumerate(common)}
    other = len(common)
    return {"column": column, "names": names, "ids": [i for i, _ in found],
            "codes": [-1 if v is None else code.get(v, other) for _, v in found]}


def _columns(conn: sqlite3.Connection) -> dict[str, str]:
    """{lower-case name: name} of the table's columns (SQLite's names are case-insensitive)."""
    return {name.lower(): name for name in rows.column_names(conn)}


def _column(name: str, known: dict[str, str]) -> str:
    found = known.get(str(name).lower())
    if found is None or found in rows.VERSION_STAMPS:
        raise SimengineError(f"no column {str(name)[:60]!r}; the columns are "
                             f"{', '.join(c for c in known.values() if c not in rows.VERSION_STAMPS)}")
    return found


def _conditions(filters: Sequence[Filter], known: dict[str, str], version: int) -> tuple[str, list[Any]]:
    where, args = rows.live_condition(version)
    clauses, args = [where], list(args)
    for f in filters:
        column = f'"{_column(f.column, known)}"'
        if f.op not in OPERATORS:
            raise SimengineError(f"filter on {f.column}: no operator {f.op[:20]!r}; use one of {', '.join(OPERATORS)}")
        if f.op in ("missing", "present"):
            clauses.append(f"{column} IS {'' if f.op == 'missing' else 'NOT '}NULL")
        elif f.op == "in":
            values = f.value if isinstance(f.value, list) else None
            if values is None or len(values) > MAX_IN_VALUES:
                raise SimengineError(f"filter on {f.column}: 'in' takes a list of at most {MAX_IN_VALUES} values")
            values = [_bound(f, v) for v in values]
            clauses.append(f"{column} IN (SELECT value FROM json_each(?))" if values else "0")
            args += [json.dumps(values)] if values else []
        elif f.op in ("eq", "ne") and f.value is None:
            clauses.append(f"{column} IS {'NOT ' if f.op == 'ne' else ''}NULL")
        else:
            value = _bound(f, f.value)
            if f.op == "contains":
                clauses.append(f"instr(lower(CAST({column} AS TEXT)), lower(?)) > 0")
            else:
                clauses.append(f"{column} {dict(eq='=', ne='IS NOT', min='>=', max='<=')[f.op]} ?")
            args.append(value)
    return " AND ".join(f"({c})" for c in clauses), args


def _bound(f: Filter, value: Any) -> Any:
    """A value fit to bind: text (bounded), a number or (for eq/ne) None."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SimengineError(f"filter on {f.column}: values are text or numbers, not {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise SimengineError(f"filter on {f.column}: a value has at most {MAX_VALUE_CHARS} characters")
    if isinstance(value, int) and not -2**63 <= value < 2**63:
        raise SimengineError(f"filter on {f.column}: {value} is beyond a 64-bit integer")
    return value

