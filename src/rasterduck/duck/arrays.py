"""`to_numpy`: a `load_bands` or `load_bands_raw` result (from fetchall, .df(), Arrow or a Python dict) as a
NumPy array."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

_PIXEL_FIELDS = ("data", "valid")


def _as_mapping(result: Any) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    if isinstance(result, pa.StructScalar):
        # the pixel fields stay Arrow (read below without a Python object per pixel); the rest is small
        return {k: (v if k in _PIXEL_FIELDS else v.as_py()) for k, v in result.items()}
    to_dict = getattr(result, "to_dict", None)  # pandas Series
    if callable(to_dict):
        value = to_dict()
        if isinstance(value, Mapping):
            return value
    raise TypeError(f"expected a load_bands result (STRUCT as dict / Arrow scalar), got {type(result).__name__}")


def _arrow_child(value: Any) -> pa.Array | None:
    """The child array of a pyarrow list value (a band list, a valid list); None for anything else."""
    return value.values if isinstance(value, (pa.ListScalar, pa.LargeListScalar)) else None


def _is_null(value: Any) -> bool:
    """A NULL field as clients give it: None, NaN or pandas.NA (pandas), or an Arrow null."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType":
        return True
    return isinstance(value, pa.Scalar) and not value.is_valid


def _blob(value: Any) -> Any:
    """The bytes of a BLOB value (Python bytes, or a pyarrow BinaryScalar's buffer); None otherwise."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value
    as_buffer = getattr(value, "as_buffer", None)
    return as_buffer() if callable(as_buffer) else None


def to_numpy(result: Any, *, masked: bool = True) -> Any:
    """(bands, height, width) pixels in the raster's native dtype from one `load_bands` value.

    Also reads `load_bands_raw` values (BLOB pixels in `dtype`, a byte per pixel in `valid`).
    `masked=True` gives a numpy.ma.MaskedArray masked where `valid` is false; `masked=False`
    gives `(array, valid)` with `valid` of shape (height, width). None (a NULL result) gives None.
    Takes a fetchall dict, an Arrow StructScalar (its pixels are read without a Python object per
    pixel), a polars dict, or a pandas row of `SELECT unnest(load_bands(...))` (whose `.df()` holds
    NumPy arrays; the STRUCT column's `.df()` holds Python lists).
    """
    if result is None or (isinstance(result, pa.Scalar) and not result.is_valid):
        return None
    r = _as_mapping(result)
    if _is_null(r.get("data")):
        err = r.get("error")
        if err is not None and not _is_null(err):
            raise ValueError(f"this load_bands result holds no pixels: {err}")
        return None  # a NULL result, also when unnest(...) spread it over columns
    h, w = int(r["height"]), int(r["width"])
    dtype = np.dtype(str(r["dtype"])) if r.get("dtype") else None
    child = _arrow_child(r["data"])
    cells = list(r["data"]) if child is None else list(child)
    blobs = [_blob(b) for b in cells]
    if blobs and blobs[0] is not None:
        if dtype is None:
            raise ValueError("a load_bands_raw result needs its dtype to read the bytes")
        le = dtype.newbyteorder("<")
        data = np.stack([np.frombuffer(b, dtype=le).astype(dtype, copy=False) for b in blobs])
    elif child is not None:  # Arrow lists: the bands lie back to back in one child array
        data = child.flatten().to_numpy(zero_copy_only=False)
    else:
        data = np.stack([np.asarray(b) for b in cells]) if cells else np.empty(0)
    data = data.reshape(len(cells), h, w)
    if dtype is not None and data.dtype != dtype:
        data = data.astype(dtype)
    v = _blob(r["valid"])
    vchild = _arrow_child(r["valid"])
    if v is not None:
        valid = np.frombuffer(v, dtype=np.uint8).astype(bool)
    elif vchild is not None:
        valid = vchild.to_numpy(zero_copy_only=False).astype(bool, copy=False)
    else:
        valid = np.asarray(r["valid"], dtype=bool)
    valid = valid.reshape(h, w)
    if not masked:
        return data, valid
    return np.ma.MaskedArray(data, mask=np.broadcast_to(~valid, data.shape).copy(),
                             fill_value=r.get("nodata") if r.get("nodata") is not None else None)
