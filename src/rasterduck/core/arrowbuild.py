"""Arrow arrays built straight from NumPy buffers.

`pa.array(...)` probes for pandas on every call, which imports pandas (~0.25 s) the first time in a
process: a query's first UDF call would pay it. These builders wrap buffers instead (no probe, no copy
for numeric data), so the result path of the UDFs never needs pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

_INT32_MAX = 2**31 - 1
_NUMPY: dict[pa.DataType, np.dtype[Any]] = {pa.int32(): np.dtype(np.int32), pa.int64(): np.dtype(np.int64), pa.float64(): np.dtype(np.float64)}


def _bitmap(bits: np.ndarray) -> pa.Buffer:
    """An Arrow bitmap (LSB first) of a boolean array."""
    return pa.py_buffer(np.packbits(np.ascontiguousarray(bits, dtype=bool), bitorder="little"))


def _validity(null: np.ndarray | None) -> tuple[pa.Buffer | None, int]:
    """The validity bitmap and null count of a row-is-null mask (None: no nulls)."""
    if null is None:
        return None, 0
    count = int(np.count_nonzero(null))
    return (_bitmap(~null), count) if count else (None, 0)


def numeric(values: np.ndarray, typ: pa.DataType | None = None, null: np.ndarray | None = None) -> pa.Array:
    """A primitive array over a 1-D NumPy array (native byte order; not copied when contiguous)."""
    arr = np.ascontiguousarray(values)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.bool_:
        return booleans(arr, null)
    t = typ if typ is not None else pa.from_numpy_dtype(arr.dtype)
    bitmap, nulls = _validity(null)
    return pa.Array.from_buffers(t, len(arr), [bitmap, pa.py_buffer(arr)], null_count=nulls)


def booleans(values: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """A boolean array (bit-packed) from a NumPy bool array."""
    bitmap, nulls = _validity(null)
    return pa.Array.from_buffers(pa.bool_(), len(values), [bitmap, _bitmap(values)], null_count=nulls)


def offsets(sizes: np.ndarray) -> pa.Array:
    """List offsets for the given sizes: int32, or int64 when they overflow."""
    off = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=off[1:])
    if off[-1] > _INT32_MAX:
        return numeric(off, pa.int64())
    return numeric(off.astype(np.int32), pa.int32())


def lists(sizes: np.ndarray, values: pa.Array, null: np.ndarray | None = None) -> pa.Array:
    """LIST (or LARGE_LIST when the offsets overflow int32) of `values` cut by `sizes`; null rows masked."""
    off = offsets(sizes)
    cls = pa.LargeListArray if off.type == pa.int64() else pa.ListArray
    mask = booleans(null) if null is not None and null.any() else None
    return cls.from_arrays(off, values, mask=mask)


def strings(values: Sequence[str | None]) -> pa.Array:
    """A UTF-8 string array (None -> null)."""
    n = len(values)
    null = np.fromiter((v is None for v in values), dtype=bool, count=n)
    encoded = [b"" if v is None else v.encode() for v in values]
    sizes = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n)
    off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=off[1:])
    data = pa.py_buffer(b"".join(encoded))
    bitmap, nulls = _validity(null)
    if off[-1] > _INT32_MAX:
        return pa.Array.from_buffers(pa.large_string(), n, [bitmap, pa.py_buffer(off), data], null_count=nulls)
    return pa.Array.from_buffers(pa.string(), n, [bitmap, pa.py_buffer(off.astype(np.int32)), data],
                                 null_count=nulls)


def scattered(values: Sequence[object], where: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A column of len(where) rows holding `values` at the True positions of `where`, null elsewhere."""
    n = len(where)
    if pa.types.is_string(typ):
        full: list[str | None] = [None] * n
        for i, v in zip(np.flatnonzero(where), values, strict=True):
            full[int(i)] = str(v)
        return strings(full)
    dense = np.zeros(n, dtype=_NUMPY[typ])
    dense[where] = np.asarray(values, dtype=dense.dtype) if len(values) else dense[where]
    return numeric(dense, typ, ~where)
