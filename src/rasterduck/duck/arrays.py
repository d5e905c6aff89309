"""`to_numpy`: a `load_bands` or `load_bands_raw` result (from fetchall, .df(), Arrow or a Python dict) as a
NumPy array."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def _as_mapping(result: Any) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    as_py = getattr(result, "as_py", None)  # pyarrow StructScalar
    if callable(as_py):
        value = as_py()
        if isinstance(value, Mapping):
            return value
    to_dict = getattr(result, "to_dict", None)  # pandas Series
    if callable(to_dict):
        value = to_dict()
        if isinstance(value, Mapping):
            return value
    raise TypeError(f"expected a load_bands result (STRUCT as dict / Arrow scalar), got {type(result).__name__}")


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
    """
    if result is None:
        return None
    r = _as_mapping(result)
    if r.get("data") is None:
        err = r.get("error")
        raise ValueError(f"this load_bands result holds no pixels{': ' + str(err) if err else ''}")
    h, w = int(r["height"]), int(r["width"])
    dtype = np.dtype(str(r["dtype"])) if r.get("dtype") else None
    cells = list(r["data"])
    blobs = [_blob(b) for b in cells]
    if blobs and blobs[0] is not None:
        if dtype is None:
            raise ValueError("a load_bands_raw result needs its dtype to read the bytes")
        le = dtype.newbyteorder("<")
        bands = [np.frombuffer(b, dtype=le).astype(dtype, copy=False) for b in blobs]
    else:
        bands = [np.asarray(b) for b in cells]
    data = np.stack(bands).reshape(len(bands), h, w) if bands else np.empty((0, h, w))
    if dtype is not None and data.dtype != dtype:
        data = data.astype(dtype)
    v = _blob(r["valid"])
    valid = (np.frombuffer(v, dtype=np.uint8).astype(bool) if v is not None
             else np.asarray(r["valid"], dtype=bool)).reshape(h, w)
    if not masked:
        return data, valid
    return np.ma.MaskedArray(data, mask=np.broadcast_to(~valid, data.shape).copy(),
                             fill_value=r.get("nodata") if r.get("nodata") is not None else None)
