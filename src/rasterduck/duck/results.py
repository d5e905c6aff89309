"""Arrow results of the UDFs, built from flat NumPy arrays and offsets (no per-pixel Python objects).

`load_bands` rows become one StructArray: the pixels of a whole chunk are one concatenated NumPy array
(cast to the registration's pixel type while concatenating), wrapped by two levels of list offsets
(row -> bands -> pixels); the valid masks, band names and transforms are built the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ..core.read import ReadResult
from ..errors import RasterduckError

Row = ReadResult | BaseException | None

_INT32_MAX = 2**31 - 1


def _offsets(sizes: np.ndarray) -> pa.Array:
    """List offsets for the given sizes (int32, or int64 when they overflow)."""
    off = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=off[1:])
    if off[-1] > _INT32_MAX:
        return pa.array(off, pa.int64())
    return pa.array(off.astype(np.int32), pa.int32())


def _list(offsets: pa.Array, values: pa.Array, mask: pa.Array | None = None) -> pa.Array:
    cls = pa.LargeListArray if offsets.type == pa.int64() else pa.ListArray
    return cls.from_arrays(offsets, values, mask=mask)


def dtype_mismatch(native: str, target: np.dtype) -> RasterduckError:
    """The error for a band whose dtype does not fit the function's pixel type."""
    from .types import PIXEL_TYPES, duck_pixel_type, pixel_dtype

    suffix = PIXEL_TYPES[pixel_dtype(native)][1]
    return RasterduckError(
        f"band dtype {native} does not fit this function's pixel type {duck_pixel_type(target)}; "
        f"call load_bands_{suffix}(...) or attach the collection with rasterduck.attach() so load_bands "
        "is retyped")


def load_bands_array(rows: Sequence[Row], target: np.dtype, *, safe: bool) -> pa.StructArray:
    """The STRUCT column of load_bands (safe: plus `error`; errors must already be filtered otherwise)."""
    n = len(rows)
    kinds = np.zeros(n, dtype=np.int8)  # 0 ok, 1 null, 2 error
    errors: list[str | None] = [None] * n
    ok: list[ReadResult] = []
    for i, r in enumerate(rows):
        if isinstance(r, ReadResult):
            if r.data.dtype != target and not np.can_cast(r.data.dtype, target, "safe"):
                exc = dtype_mismatch(r.dtype, target).with_context(record_id=r.record_id)
                if not safe:
                    raise exc
                kinds[i], errors[i] = 2, str(exc)
                continue
            ok.append(r)
        elif r is None:
            kinds[i] = 1
        else:
            if not safe:
                raise r
            kinds[i], errors[i] = 2, f"{type(r).__name__}: {r}"
    good = kinds == 0
    nb = np.zeros(n, dtype=np.int64)
    hw = np.zeros(n, dtype=np.int64)
    nb[good] = [len(r.bands) for r in ok]
    hw[good] = [r.height * r.width for r in ok]

    if ok:
        values = np.concatenate([r.data.reshape(-1) for r in ok], dtype=target, casting="safe")
        valid = np.concatenate([r.valid.reshape(-1) for r in ok])
        transforms = np.array([r.transform for r in ok], dtype=np.float64).reshape(-1)
    else:
        values = np.empty(0, dtype=target)
        valid = np.empty(0, dtype=bool)
        transforms = np.empty(0, dtype=np.float64)
    names = [b for r in ok for b in r.bands]

    bad = pa.array(~good)
    data_inner = _list(_offsets(np.repeat(hw[good], nb[good])), pa.array(values))
    data = _list(_offsets(nb), data_inner, bad)
    valid_arr = _list(_offsets(hw), pa.array(valid, pa.bool_()), bad)
    bands = _list(_offsets(nb), pa.array(names, pa.string()), bad)
    transform = _list(_offsets(np.where(good, 6, 0)), pa.array(transforms, pa.float64()), bad)

    def column(values_ok: list[object], typ: pa.DataType) -> pa.Array:
        full: list[object] = [None] * n
        for i, v in zip(np.flatnonzero(good), values_ok, strict=True):
            full[int(i)] = v
        return pa.array(full, typ)

    children = [
        bands,
        column([r.height for r in ok], pa.int32()),
        column([r.width for r in ok], pa.int32()),
        transform,
        column([r.crs for r in ok], pa.string()),
        column([r.dtype for r in ok], pa.string()),
        column([float(r.nodata) for r in ok], pa.float64()),
        data,
        valid_arr,
    ]
    names_out = ["bands", "height", "width", "transform", "crs", "dtype", "nodata", "data", "valid"]
    if safe:
        children.append(pa.array(errors, pa.string()))
        names_out.append("error")
        mask = pa.array(kinds == 1)
    else:
        mask = bad
    return pa.StructArray.from_arrays(children, names=names_out, mask=mask)


def struct_of_dicts(rows: Sequence[dict[str, object] | None], typ: pa.StructType) -> pa.Array:
    """A StructArray from small per-row dicts (statistics: a handful of numbers per row)."""
    return pa.array(list(rows), typ)
