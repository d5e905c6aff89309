"""rasterduck: pull pixels out of cloud-optimized GeoTIFFs from SQL.

Collections (Parquet, one row per raster, COG headers cached per band) are read with
`RasterAccessor.load_bands` in Python or with the `load_bands` DuckDB function in SQL; both run the same
read kernel: plan all tiles of a batch, fetch each once, decode each once.
"""

from __future__ import annotations

from typing import Any

from .build.api import BuildReport, build_collection
from .core.accessor import RasterAccessor, RasterInfo
from .core.collection import Collection, open_collection
from .core.metadata import CogMetadata
from .core.read import ReadResult
from .errors import RasterduckError

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """DuckDB entry points load lazily so `import rasterduck` stays cheap."""
    if name in ("connect", "register", "attach", "to_numpy"):
        from . import duck

        return getattr(duck, name)
    raise AttributeError(f"module 'rasterduck' has no attribute {name!r}")


__all__ = [
    "BuildReport",
    "CogMetadata",
    "Collection",
    "RasterAccessor",
    "RasterInfo",
    "RasterduckError",
    "ReadResult",
    "__version__",
    "attach",
    "build_collection",
    "connect",
    "open_collection",
    "register",
    "to_numpy",
]
