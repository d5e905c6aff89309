"""Arrow results of the UDFs. Built by the engine-neutral kernel (core/kernel.py); DuckDB adds only the
hint its dtype-mismatch error gives (which typed variant to call).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..core.kernel import Row, struct_of_dicts
from ..core.kernel import load_bands_array as _load_bands_array
from ..errors import RasterduckError


def dtype_mismatch(native: str, target: np.dtype) -> RasterduckError:
    """The error for a band whose dtype does not fit the function's pixel type."""
    from .types import PIXEL_TYPES, duck_pixel_type, pixel_dtype

    suffix = PIXEL_TYPES[pixel_dtype(native)][1]
    return RasterduckError(
        f"band dtype {native} does not fit this function's pixel type {duck_pixel_type(target)}; "
        f"call load_bands_{suffix}(...) or attach the collection with rasterduck.attach() so load_bands "
        "is retyped")


def load_bands_array(rows: list[Row], target: np.dtype, *, safe: bool) -> pa.StructArray:
    """The STRUCT column of load_bands (safe: plus `error`) with DuckDB's mismatch hint."""
    return _load_bands_array(rows, target, safe=safe, mismatch=dtype_mismatch)


__all__ = ["Row", "dtype_mismatch", "load_bands_array", "struct_of_dicts"]
