"""The bodies of rasterduck's Spark UDFs: what runs in the Python workers, one call per Arrow batch.

Each body is a module-level function bound to its settings with functools.partial, so Spark pickles a
reference (this module must be importable on the executors: install `rasterduck[spark]` there) and
every worker process builds its kernel -- background event loop, HTTP session, metadata cache -- once,
on its first batch, and reuses it for every later batch and query (Spark reuses Python workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..core import kernel as K
from ..core.read import DEFAULT_PIXEL_BUDGET
from ..errors import RasterduckError
from .types import PIXEL_VALUES_TYPE, ZONAL_TYPE, carrier_dtype, conform, load_bands_type


@dataclass(frozen=True)
class Settings:
    """What a registration fixes for every call: local access, pixel budget, fetch concurrency, aliases."""

    allow_local: bool | tuple[str, ...] = False
    pixel_budget: int | None = DEFAULT_PIXEL_BUDGET
    max_concurrent: int | None = None
    data_sources: tuple[str, ...] = ()

    def kernel(self) -> K.Kernel:
        """This worker process's kernel for these settings (created on first use)."""
        return K.process_kernel(allow_local=self.allow_local if isinstance(self.allow_local, bool)
                                else list(self.allow_local), max_concurrent=self.max_concurrent,
                                data_sources=self.data_sources)


def _arity(name: str, args: Sequence[Any], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise RasterduckError(f"{name} takes {usage}; got {len(args)} argument(s)")


def _crs(args: Sequence[Any], pos: int) -> Any:
    return args[pos] if len(args) > pos else None


def mismatch(native: str, target: np.dtype) -> RasterduckError:
    """The error for a band whose dtype does not fit the registered pixel type."""
    return RasterduckError(f"band dtype {native} does not fit this function's pixel type ({target.name} values); "
                           f"call load_bands_<type>(...) or rasterduck.spark.register(spark, collection=...) "
                           "with every collection you read")


def load_bands(settings: Settings, dtype: str, safe: bool, *args: Any) -> pa.Array:
    """load_bands(record, geom, bands[, geom_crs]) over one Arrow batch."""
    _arity("load_bands", args, 3, 4, "(record, geom, bands[, geom_crs])")
    out = K.load_bands_arrow(args[0], args[1], args[2], geometry_crs=_crs(args, 3),
                             on_error="null" if safe else "raise", pixel_budget=settings.pixel_budget,
                             pixel_type=carrier_dtype(dtype), context=settings.kernel(), mismatch=mismatch)
    return conform(out, load_bands_type(dtype, safe=safe))


def zonal_stats(settings: Settings, *args: Any) -> pa.Array:
    """zonal_stats(record, geom, band[, geom_crs]) over one Arrow batch."""
    _arity("zonal_stats", args, 3, 4, "(record, geom, band[, geom_crs])")
    out = K.zonal_stats_arrow(args[0], args[1], args[2], geometry_crs=_crs(args, 3),
                              pixel_budget=settings.pixel_budget, context=settings.kernel())
    return conform(out, ZONAL_TYPE)


def pixel_values(settings: Settings, *args: Any) -> pa.Array:
    """pixel_values(record, point, bands[, geom_crs]) over one Arrow batch."""
    _arity("pixel_values", args, 3, 4, "(record, point, bands[, geom_crs])")
    out = K.pixel_values_arrow(args[0], args[1], args[2], geometry_crs=_crs(args, 3), context=settings.kernel())
    return conform(out, PIXEL_VALUES_TYPE)


def raster_intersects(settings: Settings, *args: Any) -> pa.Array:
    """raster_intersects(record, geom[, geom_crs]) over one Arrow batch."""
    _arity("raster_intersects", args, 2, 3, "(record, geom[, geom_crs])")
    return K.intersects_arrow(args[0], args[1], geometry_crs=_crs(args, 2), context=settings.kernel())
