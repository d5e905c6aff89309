"""`load_bands_job`: collection x AOIs -> Parquet of load_bands results, as one Spark job (mapInArrow).

The pairs are hash-partitioned by scene id and sorted by it within each partition, so every pair of a
scene lands in one partition, consecutively. Each partition then buffers Arrow batches and hands them to
the kernel in calls of about `rows_per_call` rows, cut only between scenes: all AOIs of a scene are
planned together, and a tile several of them touch is fetched and decoded once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from ..core import kernel as K
from ..core.read import DEFAULT_PIXEL_BUDGET
from ..errors import RasterduckError
from . import udfs
from .register import _quote
from .types import carrier_dtype, conform, load_bands_type

_CRS_COLUMN = "__rasterduck_geom_crs"


@dataclass
class JobSummary:
    """What a job wrote: output path, pairs, rows with pixels, rows with an error, kernel calls, time.

    Counted with Spark accumulators: a retried task counts twice."""

    path: str
    pairs: int
    results: int
    errors: int
    calls: int
    seconds: float


@dataclass(frozen=True)
class _Plan:
    """Everything a partition needs (pickled to the executors)."""

    settings: udfs.Settings
    bands: tuple[str, ...]
    record: str
    geometry: str
    crs_column: str | None
    crs_constant: str | None
    dtype: str
    safe: bool
    rows_per_call: int
    keep: tuple[str, ...]
    counters: tuple[Any, Any, Any, Any]  # Spark accumulators: pairs, results, errors, calls


def _scene_cut(ids: pa.Array) -> int:
    """Rows before the last scene of a buffer (sorted by scene): where a call may end; 0 for one scene."""
    values = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    change = np.flatnonzero(values[1:] != values[:-1])
    return int(change[-1]) + 1 if change.size else 0


def _call(plan: _Plan, table: pa.Table) -> pa.RecordBatch:
    """One kernel call over a slice of whole scenes; the output batch (kept columns, record_id, result)."""
    records = K.combine(table.column(plan.record))
    crs: Any = plan.crs_constant
    if plan.crs_column is not None:
        crs = K.combine(table.column(plan.crs_column))
    result = K.load_bands_arrow(records, table.column(plan.geometry), list(plan.bands), geometry_crs=crs,
                                on_error="null" if plan.safe else "raise",
                                pixel_budget=plan.settings.pixel_budget, pixel_type=carrier_dtype(plan.dtype),
                                context=plan.settings.kernel(), mismatch=udfs.mismatch)
    result = conform(result, load_bands_type(plan.dtype, safe=plan.safe))
    ids = pc.struct_field(records, "id").cast(pa.string())
    arrays = [K.combine(table.column(c)) for c in plan.keep] + [ids, result]
    pairs, results, errors, calls = plan.counters
    pairs.add(len(result))
    results.add(len(result) - result.null_count - (result.field("error").is_valid().true_count if plan.safe else 0))
    if plan.safe:
        errors.add(pc.sum(result.field("error").is_valid()).as_py() or 0)
    calls.add(1)
    return pa.RecordBatch.from_arrays(arrays, names=[*plan.keep, "record_id", "result"])


def run_partition(plan: _Plan, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: buffer a partition's batches and call the kernel on whole scenes."""
    buffer: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        buffer.append(batch)
        rows += batch.num_rows
        if rows < plan.rows_per_call:
            continue
        table = pa.Table.from_batches(buffer)
        cut = _scene_cut(K.combine(pc.struct_field(K.combine(table.column(plan.record)), "id")))
        cut = cut or table.num_rows  # one scene fills the buffer: plan it whole
        yield _call(plan, table.slice(0, cut))
        rest = table.slice(cut)
        buffer = rest.to_batches() if rest.num_rows else []
        rows = rest.num_rows
    if rows:
        yield _call(plan, pa.Table.from_batches(buffer))


def _record_dtypes(pairs: DataFrame, record: str, bands: Sequence[str]) -> set[str]:
    """Band dtypes of the records in `pairs` (one Spark pass over the metadata `dtype` fields)."""
    rtype = pairs.schema[record].dataType
    if not isinstance(rtype, StructType):
        raise RasterduckError(f"column {record!r} must be a collection row struct (struct(r.*)), got {rtype}")
    metas = [f.name for f in rtype.fields if f.name.endswith("_metadata")]
    wanted = [m for m in metas if m[: -len("_metadata")] in bands] or metas
    cols = [F.col(f"{_quote(record)}.{_quote(m)}.dtype") for m in wanted]
    rows = pairs.select(F.explode(F.array(*cols)).alias("d")).distinct().collect()
    return {str(r["d"]) for r in rows if r["d"]}


def load_bands_job(
    pairs: DataFrame,
    bands: Sequence[str],
    out_path: str,
    *,
    record: str = "record",
    geometry: str = "geom",
    geometry_crs: str | None = None,
    dtype: str | None = None,
    partitions: int | None = None,
    rows_per_call: int = 2048,
    on_error: K.OnError = "null",
    mode: str = "errorifexists",
    partition_by: Sequence[str] = (),
    allow_local: bool | Sequence[str] = False,
    pixel_budget: int | None = DEFAULT_PIXEL_BUDGET,
    max_concurrent: int | None = None,
    data_sources: Sequence[str] = (),
) -> JobSummary:
    """Read `bands` for every (record, AOI) row of `pairs` and write Parquet to `out_path`.

    `pairs` has a collection row struct column `record` (e.g. `struct(r.*) AS record`) and an AOI column
    `geometry` (WKB, WKT, or a GEOMETRY -- Spark's or Sedona's -- converted with ST_AsBinary and its
    SRID). `geometry_crs`: a column of `pairs` or one CRS for all rows (default EPSG:4326). Output: the
    columns of `pairs` but `record`, plus `record_id` and `result` (the load_bands struct; with
    `on_error='null'`, the default, plus `error`: a broken scene does not fail the job). `partitions`:
    shuffle partitions of the scene repartition (default spark.sql.shuffle.partitions); `rows_per_call`:
    rows per kernel call, cut between scenes. `dtype`: pixel type (default: promoted from the records,
    one extra pass over the metadata dtypes).
    """
    start = time.perf_counter()
    spark = pairs.sparkSession
    safe = K._check_on_error(on_error)
    if record not in pairs.columns or geometry not in pairs.columns:
        raise RasterduckError(f"pairs needs columns {record!r} and {geometry!r}; has {pairs.columns}")
    crs_column: str | None = None
    crs_constant: str | None = None
    if geometry_crs is not None and geometry_crs in pairs.columns:
        crs_column = geometry_crs
    else:
        crs_constant = geometry_crs
    gtype = pairs.schema[geometry].dataType
    if not isinstance(gtype, BinaryType | StringType):  # a GEOMETRY column: Spark's own or Sedona's UDT
        if crs_column is None and crs_constant is None:
            srid = F.expr(f"ST_SRID({_quote(geometry)})")
            pairs = pairs.withColumn(_CRS_COLUMN, F.when(srid > 0, F.concat(F.lit("EPSG:"), srid.cast("string"))))
            crs_column = _CRS_COLUMN
        pairs = pairs.withColumn(geometry, F.expr(f"ST_AsBinary({_quote(geometry)})"))
    chosen = K.pixel_dtype(dtype) if dtype is not None else K.promote(_record_dtypes(pairs, record, bands))

    rid = F.col(f"{_quote(record)}.id")
    parted = pairs.repartition(partitions, rid) if partitions else pairs.repartition(rid)
    parted = parted.sortWithinPartitions(rid)

    keep = tuple(c for c in pairs.columns if c not in (record, _CRS_COLUMN))
    clash = {"record_id", "result"} & set(keep)
    if clash:
        raise RasterduckError(f"pairs already has column(s) {sorted(clash)}: rename them (the output adds both)")
    out_struct = StructType([pairs.schema[c] for c in keep] + [
        StructField("record_id", StringType()), StructField("result", load_bands_type(chosen, safe=safe))])
    sc = spark.sparkContext
    counters = (sc.accumulator(0), sc.accumulator(0), sc.accumulator(0), sc.accumulator(0))
    local = allow_local if isinstance(allow_local, bool) else tuple(str(p) for p in allow_local)
    plan = _Plan(udfs.Settings(local, pixel_budget, max_concurrent, tuple(data_sources)), tuple(bands), record,
                 geometry, crs_column, crs_constant, chosen, safe, max(1, rows_per_call), keep, counters)
    out = parted.mapInArrow(partial(run_partition, plan), out_struct)
    writer = out.write.mode(mode)
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.parquet(out_path)
    return JobSummary(out_path, counters[0].value, counters[1].value, counters[2].value, counters[3].value,
                      time.perf_counter() - start)
