"""`register(spark)`: rasterduck's functions as Arrow UDFs (pyspark's `arrow_udf`) on a SparkSession.

    load_bands(record, geom, bands[, geom_crs])      -> STRUCT(bands, height, width, transform, crs, dtype,
                                                        nodata, data ARRAY<ARRAY<T>>, valid ARRAY<BOOLEAN>)
    load_bands_safe(...)                             -> the same plus `error STRING` (a failing row: NULL
                                                        fields and the error text, not a failed job)
    load_bands_u8 | _i8 | _u16 | ... | _f64          fixed pixel types (see types.py for the Spark types)
    zonal_stats(record, geom, band[, geom_crs])      -> STRUCT(count, valid_count, min, max, mean, std, sum)
    pixel_values(record, point, bands[, geom_crs])   -> ARRAY<DOUBLE>
    raster_intersects(record, geom[, geom_crs])      -> BOOLEAN (footprint test; `record` may be the footprint
                                                        column `r.geometry`: Spark allows no `r.*` in a join
                                                        condition)

`record` is a collection row as a struct (`struct(r.*)`); AOIs are WKB BINARY, WKT STRING or Spark's
GEOMETRY (with Apache Sedona: `ST_AsBinary(geom)`), EPSG:4326 unless `geom_crs` (or a GEOMETRY's SRID)
says otherwise. arrow_udf hands each Arrow batch (`spark.sql.execution.arrow.maxRecordsPerBatch` rows,
10,000 by default) to the kernel as is: no pandas, pixels leave as flat Arrow buffers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, DataType

from ..core.kernel import band_dtypes, pixel_dtype, promote
from ..core.read import DEFAULT_PIXEL_BUDGET
from ..errors import RasterduckError
from . import udfs
from .types import PIXEL_VALUES_TYPE, SPARK_PIXEL_TYPES, ZONAL_TYPE, load_bands_type, spark_pixel_type

CollectionLike = Any  # a Parquet path (file or folder), a Collection, a pyarrow Table or a Spark DataFrame


@dataclass
class Registration:
    """What `register` did: the pixel dtype `load_bands` carries, its Spark type, the function names."""

    pixel_dtype: str
    pixel_type: DataType
    settings: udfs.Settings
    functions: list[str] = field(default_factory=list)


def _arrow_udf(fn: Any, returns: DataType) -> Any:
    if not hasattr(F, "arrow_udf"):
        import pyspark

        raise RasterduckError(f"rasterduck.spark needs pyspark >= 4.1 (functions.arrow_udf); found {pyspark.__version__}")
    from pyspark.sql.functions import ArrowUDFType

    return F.arrow_udf(fn, returns, ArrowUDFType.SCALAR)


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def collection_dtypes(collection: CollectionLike) -> tuple[set[str], str]:
    """Band dtypes and data source of a collection (path, Collection, pyarrow Table or Spark DataFrame).

    Only the `dtype` field of each `{band}_metadata` column is read, not the tile tables."""
    from ..core.collection import Collection

    if isinstance(collection, DataFrame):
        metas = [f.name for f in collection.schema.fields if f.name.endswith("_metadata")]
        out: set[str] = set()
        for m in metas:
            rows = collection.select(F.col(f"{_quote(m)}.dtype").alias("d")).distinct().collect()
            out |= {str(r["d"]) for r in rows if r["d"]}
        return out, ""
    if isinstance(collection, Collection):
        return band_dtypes(collection.to_arrow()), collection.data_source
    if hasattr(collection, "schema") and hasattr(collection, "column"):
        return band_dtypes(collection), ""
    import pyarrow.dataset as ds

    path = Path(os.fspath(collection)).expanduser()
    dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    metas = [f.name for f in dataset.schema if f.name.endswith("_metadata")]
    table = dataset.to_table(columns={m: ds.field(m, "dtype") for m in metas})
    out = set()
    for m in metas:
        out |= {str(v) for v in table.column(m).unique().to_pylist() if v}
    source = ""
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if files:
        import pyarrow.parquet as pq

        meta = pq.read_schema(files[0]).metadata or {}
        source = meta.get(b"data_source", b"").decode()
    return out, "" if source == "unknown" else source


def register(
    spark: SparkSession,
    *,
    collection: CollectionLike | Sequence[CollectionLike] | None = None,
    dtype: str | None = None,
    allow_local: bool | Sequence[str | os.PathLike[str]] = False,
    pixel_budget: int | None = DEFAULT_PIXEL_BUDGET,
    max_concurrent: int | None = None,
    data_sources: Sequence[str] = (),
) -> Registration:
    """Register rasterduck's functions on `spark` (session-scoped temporary functions).

    `load_bands`' pixel type is fixed here: `dtype`, else the promotion of the band dtypes of
    `collection` (one or a list), else double. `allow_local`: local paths the workers may open (False:
    none; True: any; folders). `pixel_budget`: bytes of pixels one Arrow batch may hold.
    `max_concurrent`: range requests in flight per Python worker (default 50).
    """
    dtypes: set[str] = set()
    sources = list(data_sources)
    if collection is not None:
        many = collection if isinstance(collection, list | tuple) else [collection]
        for c in many:
            found, source = collection_dtypes(c)
            dtypes |= found
            if source:
                sources.append(source)
    chosen = pixel_dtype(dtype) if dtype is not None else promote(dtypes)
    local = allow_local if isinstance(allow_local, bool) else tuple(str(Path(p).expanduser().resolve()) for p in allow_local)
    settings = udfs.Settings(local, pixel_budget, max_concurrent, tuple(dict.fromkeys(sources)))
    reg = Registration(chosen, spark_pixel_type(chosen), settings)

    def add(name: str, fn: Any, returns: DataType) -> None:
        spark.udf.register(name, _arrow_udf(fn, returns))
        reg.functions.append(name)

    add("load_bands", partial(udfs.load_bands, settings, chosen, False), load_bands_type(chosen))
    add("load_bands_safe", partial(udfs.load_bands, settings, chosen, True), load_bands_type(chosen, safe=True))
    for dt, (_t, _carrier, suffix) in SPARK_PIXEL_TYPES.items():
        add(f"load_bands_{suffix}", partial(udfs.load_bands, settings, dt, False), load_bands_type(dt))
    add("zonal_stats", partial(udfs.zonal_stats, settings), ZONAL_TYPE)
    add("pixel_values", partial(udfs.pixel_values, settings), PIXEL_VALUES_TYPE)
    add("raster_intersects", partial(udfs.raster_intersects, settings), BooleanType())
    return reg
