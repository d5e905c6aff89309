"""`to_numpy`: a `load_bands` result (from fetchall, .df(), Arrow or a Python dict) as a NumPy array."""

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


def to_numpy(result: Any, *, masked: bool = True) -> Any:
    """(bands, height, width) pixels in the raster's native dtype from one `load_bands` value.

    `masked=True` gives a numpy.ma.MaskedArray masked where `valid` is false; `masked=False` gives
    `(array, valid)` with `valid` of shape (height, width). None (a NULL result) gives None.
    """
    if result is None:
        return None
    r = _as_mapping(result)
    if r.get("data") is None:
        err = r.get("error")
        raise ValueError(f"this load_bands result holds no pixels{': ' + str(err) if err else ''}")
    h, w = int(r["height"]), int(r["width"])
    dtype = np.dtype(str(r["dtype"])) if r.get("dtype") else None
    bands = [np.asarray(b) for b in r["data"]]
    data = np.stack(bands).reshape(len(bands), h, w) if bands else np.empty((0, h, w))
    if dtype is not None and data.dtype != dtype:
        data = data.astype(dtype)
    valid = np.asarray(r["valid"], dtype=bool).reshape(h, w)
    if not masked:
        return data, valid
    return np.ma.MaskedArray(data, mask=np.broadcast_to(~valid, data.shape).copy(),
                             fill_value=r.get("nodata") if r.get("nodata") is not None else None)
