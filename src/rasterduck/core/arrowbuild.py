"""Arrow arrays built without `pa.array`.

`pa.array(...)` probes for pandas on every call, which imports pandas (~0.25 s) the first time in a
process: a query's first UDF call, or a build of 32 COGs, would pay it. Two kinds of builders here wrap
buffers laid out with NumPy (`pa.Array.from_buffers`) instead:

- from NumPy arrays (`numeric`, `booleans`, `lists`, `strings`, `scattered`): the UDF result columns,
  numeric data not copied;
- from plain Python values (`array_of`, `infer_array`): the build's columns. Only values whose
  conversion is unambiguous take the fast path (`int`, `float`, `str`, `bytes`, `list`/`tuple`,
  `dict`); anything else goes to `pa.array`, so the result and every error are the ones it gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
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


def binaries(sizes: np.ndarray, data: np.ndarray, null: np.ndarray | None = None) -> pa.Array:
    """BLOB values cut from one byte buffer by `sizes` (LARGE_BINARY when the offsets overflow int32)."""
    off = offsets(sizes)
    t = pa.large_binary() if off.type == pa.int64() else pa.binary()
    bitmap, nulls = _validity(null)
    return pa.Array.from_buffers(t, len(sizes), [bitmap, off.buffers()[1], pa.py_buffer(np.ascontiguousarray(data))],
                                 null_count=nulls)


def validity(arr: pa.Array) -> np.ndarray:
    """True where `arr` (its own level, not its children) is not null, read from the validity bitmap."""
    buf = arr.buffers()[0]
    if buf is None or arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    bits = np.unpackbits(np.frombuffer(buf, dtype=np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].astype(bool)


def float_values(arr: pa.Array) -> np.ndarray:
    """Float64 values of a numeric array, NaN where null (read from the buffers: pyarrow's `to_numpy` of
    an array with nulls imports pandas, ~0.15 s in a fresh process)."""
    a = arr.cast(pa.float64())
    out = np.frombuffer(a.buffers()[1], dtype=np.float64)[a.offset : a.offset + len(a)].copy()
    out[~validity(a)] = np.nan
    return out


def strings(values: Sequence[str | None]) -> pa.Array:
    """A UTF-8 string array (None -> null)."""
    return array_of(list(values), pa.string())


def scattered(values: Sequence[object], where: np.ndarray, typ: pa.DataType) -> pa.Array:
    """A column of len(where) rows holding `values` at the True positions of `where`, null elsewhere."""
    n = len(where)
    if pa.types.is_string(typ):
        full: list[str | None] = [None] * n
        for i, v in zip(np.flatnonzero(where), values, strict=True):
            full[int(i)] = None if v is None else str(v)
        return strings(full)
    dense = np.zeros(n, dtype=_NUMPY[typ])
    dense[where] = np.asarray(values, dtype=dense.dtype) if len(values) else dense[where]
    return numeric(dense, typ, ~where)


# ---- from Python values ------------------------------------------------------------------------------
_NONE = type(None)
# pa.array refuses ints beyond these magnitudes for float64 / float32 (past them not every int is exact)
_EXACT_FLOAT_INT = 2**53
_EXACT_FLOAT32_INT = 2**24


class _Slow(Exception):
    """The values need `pa.array`'s full conversion rules."""


def array_of(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    """An Arrow array of `type` from Python values (None is null), equal to `pa.array(values, type)`."""
    items = values if isinstance(values, list) else list(values)
    try:
        return _build(items, type)
    except _Slow:
        return pa.array(values, type)


def infer_array(values: Sequence[Any]) -> pa.Array:
    """An Arrow array typed like `pa.array(values)` infers it, for columns of plain scalars."""
    items = values if isinstance(values, list) else list(values)
    kinds = set(map(type, items)) - {_NONE}
    guess: pa.DataType | None
    if not kinds:
        guess = pa.null()
    elif kinds == {bool}:
        guess = pa.bool_()
    elif kinds == {int}:
        guess = pa.int64()
    elif kinds <= {int, float}:
        guess = pa.float64()
    elif kinds == {str}:
        guess = pa.string()
    elif kinds == {bytes}:
        guess = pa.binary()
    else:
        guess = None
    if guess is not None:
        try:
            return _build(items, guess)
        except _Slow:
            pass
    return pa.array(values)


def _value_validity(values: list[Any], has_nulls: bool) -> tuple[pa.Buffer | None, int]:
    """(validity bitmap or None, null count)."""
    if not has_nulls:
        return None, 0
    valid = np.fromiter((v is not None for v in values), dtype=np.bool_, count=len(values))
    return _bitmap(valid), len(values) - int(valid.sum())


def _build(values: list[Any], t: pa.DataType) -> pa.Array:
    n = len(values)
    kinds = set(map(type, values))
    has_nulls = _NONE in kinds
    kinds.discard(_NONE)
    if pa.types.is_null(t):
        if kinds:
            raise _Slow
        return pa.nulls(n)
    bitmap, nulls = _value_validity(values, has_nulls)
    if pa.types.is_struct(t):
        return _struct(values, t, kinds, has_nulls, bitmap, nulls)
    if pa.types.is_list(t):
        return _list(values, t, kinds, has_nulls, bitmap, nulls)
    if pa.types.is_string(t) or pa.types.is_binary(t):
        if kinds - ({str} if pa.types.is_string(t) else {bytes}):
            raise _Slow
        present = [v for v in values if v is not None] if has_nulls else values
        try:
            encoded: list[bytes] = [v.encode() for v in present] if str in kinds else present
        except UnicodeEncodeError as exc:
            raise _Slow from exc
        parts = iter(encoded)
        parts_all = [b"" if v is None else next(parts) for v in values] if has_nulls else encoded
        ends = np.cumsum(np.fromiter(map(len, parts_all), dtype=np.int64, count=n))
        if n and ends[-1] > _INT32_MAX:
            raise _Slow
        offsets = np.zeros(n + 1, dtype=np.int32)
        offsets[1:] = ends
        return _checked(pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(encoded))],
                                              null_count=nulls))
    data = _primitive([0 if v is None else v for v in values] if has_nulls else values, t, kinds)
    return _checked(pa.Array.from_buffers(t, n, [bitmap, pa.py_buffer(data)], null_count=nulls))


def _primitive(filled: list[Any], t: pa.DataType, kinds: set[type]) -> bytes:
    """The data buffer of a fixed-width column (`filled`: nulls replaced by zero)."""
    if pa.types.is_boolean(t):
        if kinds - {bool}:
            raise _Slow
        return np.packbits(np.asarray(filled, dtype=np.bool_), bitorder="little").tobytes()
    if pa.types.is_integer(t) or pa.types.is_timestamp(t):
        if kinds - {int}:
            raise _Slow
        signed = pa.types.is_timestamp(t) or pa.types.is_signed_integer(t)
        dtype = np.dtype(f"{'i' if signed else 'u'}{t.bit_width // 8}")
        try:
            arr = np.asarray(filled, dtype=np.int64 if signed else np.uint64)
        except OverflowError as exc:
            raise _Slow from exc
        if arr.size and dtype.itemsize < 8:
            info = np.iinfo(dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise _Slow
        return arr.astype(dtype, copy=False).tobytes()
    if pa.types.is_float32(t) or pa.types.is_float64(t):
        if kinds - {int, float}:
            raise _Slow
        limit = _EXACT_FLOAT_INT if pa.types.is_float64(t) else _EXACT_FLOAT32_INT
        if int in kinds and any(type(v) is int and abs(v) > limit for v in filled):
            raise _Slow
        arr64 = np.asarray(filled, dtype=np.float64)
        if pa.types.is_float64(t):
            return arr64.tobytes()
        with np.errstate(over="ignore"):  # beyond float32's range: inf, as pa.array gives
            return arr64.astype(np.float32).tobytes()
    raise _Slow


def _list(values: list[Any], t: pa.ListType, kinds: set[type], has_nulls: bool, bitmap: pa.Buffer | None,
          nulls: int) -> pa.Array:
    if kinds - {list, tuple}:
        raise _Slow
    present = [v for v in values if v is not None] if has_nulls else values
    lengths = np.zeros(len(values), dtype=np.int64)
    if has_nulls:
        lengths[[i for i, v in enumerate(values) if v is not None]] = np.fromiter(map(len, present), dtype=np.int64,
                                                                                  count=len(present))
    else:
        lengths[:] = np.fromiter(map(len, present), dtype=np.int64, count=len(present))
    ends = np.cumsum(lengths)
    if values and ends[-1] > _INT32_MAX:
        raise _Slow
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    offsets[1:] = ends
    child = _build(list(chain.from_iterable(present)), t.value_type)
    return _checked(pa.Array.from_buffers(t, len(values), [bitmap, pa.py_buffer(offsets.tobytes())], null_count=nulls,
                                          children=[child]))


def _struct(values: list[Any], t: pa.StructType, kinds: set[type], has_nulls: bool, bitmap: pa.Buffer | None,
            nulls: int) -> pa.Array:
    if kinds - {dict}:
        raise _Slow
    names = [t.field(i).name for i in range(t.num_fields)]
    columns: list[list[Any]]
    if not has_nulls and values and all(list(v) == names for v in values):  # to_dict() rows: transpose at once
        columns = [list(c) for c in zip(*(v.values() for v in values), strict=True)]
    else:
        columns = [[None if v is None else v.get(name) for v in values] for name in names]
    children = [_build(col, t.field(i).type) for i, col in enumerate(columns)]
    return _checked(pa.Array.from_buffers(t, len(values), [bitmap], null_count=nulls, children=children))


def _checked(arr: pa.Array) -> pa.Array:
    arr.validate()
    return arr


