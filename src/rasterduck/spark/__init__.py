"""Spark surface: the same `load_bands` (and zonal_stats, pixel_values) in Spark SQL, for jobs that
outgrow one machine. Needs `pip install rasterduck[spark]` (pyspark >= 4.1) on the driver and executors.

    import rasterduck.spark
    rasterduck.spark.register(spark, collection="scenes.parquet")   # fixes load_bands' pixel type
    spark.read.parquet("scenes.parquet").createOrReplaceTempView("collection")
    spark.sql('''SELECT aoi.id, r.id, load_bands(struct(r.*), aoi.geom, array('B04', 'B08')) AS px
                 FROM collection r JOIN aoi ON raster_intersects(r.geometry, aoi.geom)''')

    # bulk: collection x AOIs -> Parquet, planned per partition (scenes' shared tiles fetched once)
    rasterduck.spark.load_bands_job(pairs, ["B04", "B08"], "s3://bucket/out/")

Both run the engine-neutral kernel (core/kernel.py) that DuckDB's UDFs run; types.py documents how
pixel types map onto Spark's (no unsigned integers: uint16 -> int, ...). See docs/scaling.md.
"""

from __future__ import annotations

from .job import JobSummary, load_bands_job
from .register import Registration, collection_dtypes, register
from .types import SPARK_PIXEL_TYPES, load_bands_type, spark_pixel_type

__all__ = [
    "SPARK_PIXEL_TYPES",
    "JobSummary",
    "Registration",
    "collection_dtypes",
    "load_bands_job",
    "load_bands_type",
    "register",
    "spark_pixel_type",
]
