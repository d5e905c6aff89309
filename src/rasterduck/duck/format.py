"""Printing query results like the DuckDB CLI: box (default), csv, json, jsonlines, markdown, line."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MODES = ("box", "csv", "json", "jsonlines", "markdown", "line")
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


@dataclass
class Table:
    """One statement's result: column names, DuckDB type names, rows of Python values."""

    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


def _blob(b: bytes) -> str:
    return "".join(chr(c) if 32 <= c < 127 and c != 92 else f"\\x{c:02X}" for c in b)


def _float(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def text(v: Any, *, nested: bool = False, null: str = "NULL") -> str:
    """A value as the DuckDB CLI shows it (lists as [a, b], structs as {'k': v})."""
    if v is None:
        return null
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return _float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        return _blob(bytes(v))
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dict):
        return "{" + ", ".join(f"'{k}': {text(x, nested=True)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(text(x, nested=True) for x in v) + "]"
    tolist = getattr(v, "tolist", None)  # numpy values
    if callable(tolist):
        return text(tolist(), nested=nested, null=null)
    return str(v)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes | bytearray | memoryview):
        return _blob(bytes(v))
    if isinstance(v, decimal.Decimal | uuid.UUID | dt.date | dt.time | dt.timedelta):
        return text(v)
    tolist = getattr(v, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    return str(v)


def _json_row(t: Table, row: tuple[Any, ...]) -> str:
    return json.dumps({c: _jsonable(v) for c, v in zip(t.columns, row, strict=True)}, separators=(",", ":"))


def _is_numeric(typ: str) -> bool:
    t = typ.upper()
    return t.startswith(_NUMERIC) and not t.endswith("]")


def _clip(s: str, width: int) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= width else s[: max(width - 1, 1)] + "…"


def render_box(t: Table, *, max_rows: int = 40, max_width: int = 60) -> str:
    """A duckbox: names and types in the header, numbers right-aligned, long values and tables cut."""
    shown: list[tuple[Any, ...] | None] = list(t.rows)
    if max_rows and len(t.rows) > max_rows:
        half = max_rows // 2
        shown = [*t.rows[:half], None, *t.rows[-half:]]
    cells = [[_clip(text(v), max_width) for v in row] if row is not None else None for row in shown]
    widths = [max(len(c), len(ty)) for c, ty in zip(t.columns, t.types, strict=True)]
    for row in cells:
        if row is not None:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    num = [_is_numeric(ty) for ty in t.types]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    def fmt(values: Sequence[str], align: Sequence[str]) -> str:
        parts = []
        for v, w, a in zip(values, widths, align, strict=True):
            parts.append(" " + (v.rjust(w) if a == "r" else v.center(w) if a == "c" else v.ljust(w)) + " ")
        return "│" + "│".join(parts) + "│"

    out = [line("┌", "┬", "┐"), fmt(t.columns, "c" * len(widths)), fmt([ty.lower() for ty in t.types], "c" * len(widths)),
           line("├", "┼", "┤")]
    for row in cells:
        if row is None:
            out.append(fmt(["·"] * len(widths), "c" * len(widths)))
        else:
            out.append(fmt(row, ["r" if n else "l" for n in num]))
    out.append(line("└", "┴", "┘"))
    if len(shown) != len(t.rows):
        out.append(f"  {len(t.rows)} rows ({max_rows} shown)")
    return "\n".join(out)


def render(t: Table, mode: str, *, max_rows: int = 40, max_width: int = 60) -> str:
    """The whole table in one output mode (no trailing newline)."""
    if mode == "box":
        return render_box(t, max_rows=max_rows, max_width=max_width)
    if mode == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(t.columns)
        for row in t.rows:
            w.writerow([text(v) for v in row])
        return buf.getvalue().rstrip("\n")
    if mode == "json":
        if not t.rows:
            return ""
        return "[" + ",\n".join(_json_row(t, row) for row in t.rows) + "]"
    if mode == "jsonlines":
        return "\n".join(_json_row(t, row) for row in t.rows)
    if mode == "markdown":
        num = [_is_numeric(ty) for ty in t.types]
        rows = [[text(v).replace("|", "\\|").replace("\n", " ") for v in row] for row in t.rows]
        widths = [max([len(c), 3, *(len(r[i]) for r in rows)]) for i, c in enumerate(t.columns)]
        head = "| " + " | ".join(c.center(w) for c, w in zip(t.columns, widths, strict=True)) + " |"
        rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, num, strict=True)) + "|"
        body = ["| " + " | ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(r, widths, num, strict=True)) + " |"
                for r in rows]
        return "\n".join([head, rule, *body])
    if mode == "line":
        width = max((len(c) for c in t.columns), default=0)
        blocks = ["\n".join(f"{c.rjust(width)} = {text(v)}" for c, v in zip(t.columns, row, strict=True))
                  for row in t.rows]
        return "\n\n".join(blocks)
    raise ValueError(f"unknown output mode {mode!r}; expected one of {', '.join(MODES)}")
