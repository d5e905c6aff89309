"""DuckDB types of rasterduck's SQL results, and the rule that picks the pixel type T of `load_bands`.

A Python UDF's return type is fixed when it is registered, so pixels cannot follow each row's dtype.
The rule: `load_bands` returns `data T[][]` where T is the NumPy promotion (`numpy.result_type`) of
every band dtype of every collection attached with `rasterduck.attach` (before any attach: DOUBLE).
One uint16 collection gives USMALLINT, an int8 one TINYINT, float32 FLOAT; attaching both a uint16 and
an int8 collection promotes to INTEGER (int32, the smallest type holding both), uint16 with float32 to FLOAT.
The typed variants `load_bands_u8 ... load_bands_f64` always exist and never change.
The rule itself (`pixel_dtype`, `promote`) is engine-neutral and lives in core/kernel.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..core.kernel import DEFAULT_PIXEL_DTYPE, pixel_dtype, promote

# NumPy dtype name -> (DuckDB type, suffix of the typed variant)
PIXEL_TYPES: dict[str, tuple[str, str]] = {
    "uint8": ("UTINYINT", "u8"),
    "int8": ("TINYINT", "i8"),
    "uint16": ("USMALLINT", "u16"),
    "int16": ("SMALLINT", "i16"),
    "uint32": ("UINTEGER", "u32"),
    "int32": ("INTEGER", "i32"),
    "uint64": ("UBIGINT", "u64"),
    "int64": ("BIGINT", "i64"),
    "float32": ("FLOAT", "f32"),
    "float64": ("DOUBLE", "f64"),
}

ZONAL_TYPE = ("STRUCT(count BIGINT, valid_count BIGINT, min DOUBLE, max DOUBLE, mean DOUBLE, std DOUBLE, "
              "sum DOUBLE)")
SEDONA_STATS_TYPE = ("STRUCT(count DOUBLE, sum DOUBLE, mean DOUBLE, median DOUBLE, mode DOUBLE, "
                     "stddev DOUBLE, variance DOUBLE, min DOUBLE, max DOUBLE)")


def duck_pixel_type(dtype: str | np.dtype) -> str:
    """DuckDB type of one pixel of `dtype` (uint16 -> USMALLINT, int8 -> TINYINT, float32 -> FLOAT)."""
    return PIXEL_TYPES[pixel_dtype(dtype)][0]


def _pixels_struct(data: str, valid: str, safe: bool) -> str:
    """The load_bands STRUCT with the given `data` and `valid` types (safe: plus an `error` field)."""
    fields = [
        "bands VARCHAR[]", "height INTEGER", "width INTEGER", "transform DOUBLE[]", "crs VARCHAR",
        "dtype VARCHAR", "nodata DOUBLE", f"data {data}", f"valid {valid}",
    ]
    if safe:
        fields.append("error VARCHAR")
    return "STRUCT(" + ", ".join(fields) + ")"


def result_type(dtype: str, *, safe: bool = False) -> str:
    """The STRUCT returned by load_bands with pixels of `dtype` (safe: plus an `error` field)."""
    return _pixels_struct(f"{duck_pixel_type(dtype)}[][]", "BOOLEAN[]", safe)


def raw_result_type(*, safe: bool = False) -> str:
    """The STRUCT returned by load_bands_raw: load_bands' fields with `data BLOB[]` (one per band, the
    pixels' little-endian bytes in `dtype`) and `valid BLOB` (a byte per pixel, 1 = valid)."""
    return _pixels_struct("BLOB[]", "BLOB", safe)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def arrow_to_duck(t: pa.DataType) -> str:
    """DuckDB SQL spelling of an Arrow type (the subset our structs use)."""
    simple = {
        pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
        pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER", pa.uint64(): "UBIGINT",
        pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", pa.large_string(): "VARCHAR",
        pa.binary(): "BLOB", pa.large_binary(): "BLOB", pa.bool_(): "BOOLEAN",
    }
    if t in simple:
        return simple[t]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return arrow_to_duck(t.value_type) + "[]"
    if pa.types.is_struct(t):
        inner = ", ".join(f"{_quote(t.field(i).name)} {arrow_to_duck(t.field(i).type)}" for i in range(t.num_fields))
        return f"STRUCT({inner})"
    raise TypeError(f"no DuckDB spelling for Arrow type {t}")


__all__ = [
    "DEFAULT_PIXEL_DTYPE",
    "PIXEL_TYPES",
    "SEDONA_STATS_TYPE",
    "ZONAL_TYPE",
    "arrow_to_duck",
    "duck_pixel_type",
    "pixel_dtype",
    "promote",
    "result_type",
]
