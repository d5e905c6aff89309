"""The Python UDFs behind rasterduck's SQL functions (registration is in register.py).

Every function is an Arrow UDF registered with open (varargs) parameters, so one name accepts any
collection row STRUCT, GEOMETRY / WKB BLOB / WKT VARCHAR AOIs, and optional trailing arguments.
The work is the engine-neutral kernel's (core/kernel.py, shared with Spark): one UDF call is one kernel
call, planned as a whole -- a single `read_batch` per call, so a tile several rows need is fetched and
decoded once. This module only unpacks DuckDB's arguments; the Sedona-named RS_* functions add their
argument conventions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from shapely.geometry.base import BaseGeometry

from ..core import arrowbuild as ab
from ..core import kernel as K
from ..core.kernel import AOI_CRS, ChunkRecords, Row, combine, parse_geoms, read_pairs
from ..core.metadata import CogMetadata
from ..core.read import ReadResult
from ..errors import RasterduckError
from .results import dtype_mismatch, struct_of_dicts
from .state import State
from .types import SEDONA_STATS_TYPE, ZONAL_TYPE

Udf = Callable[..., pa.Array]


# ---- argument helpers ----------------------------------------------------------------------------
def _arity(name: str, args: Sequence[Any], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise RasterduckError(f"{name} takes {usage}; got {len(args)} argument(s)")


def _pylist(values: Any) -> list[Any]:
    return combine(values).to_pylist()  # type: ignore[no-any-return]


def _crs_arg(args: Sequence[Any], pos: int) -> Any:
    """The optional trailing geom_crs argument (None when absent: EPSG:4326)."""
    return args[pos] if len(args) > pos else None


# ---- load_bands, zonal statistics, point values, raster_intersects ------------------------------------
def make_load_bands(state: State, dtype: str, *, safe: bool) -> Udf:
    """load_bands(record, geom, bands[, crs]) with pixels of `dtype` (safe: NULL + error per bad row)."""

    def load_bands(*args: Any) -> pa.Array:
        _arity("load_bands", args, 3, 4, "(record, geom, bands[, geom_crs])")
        return K.load_bands_arrow(args[0], args[1], args[2], geometry_crs=_crs_arg(args, 3),
                                  on_error="null" if safe else "raise", pixel_type=dtype, context=state,
                                  mismatch=dtype_mismatch)

    return load_bands


def make_load_bands_raw(state: State, *, safe: bool) -> Udf:
    """load_bands_raw(record, geom, bands[, crs]): load_bands with BLOB pixels (safe: NULL + error)."""

    def load_bands_raw(*args: Any) -> pa.Array:
        _arity("load_bands_raw", args, 3, 4, "(record, geom, bands[, geom_crs])")
        return K.load_bands_raw_arrow(args[0], args[1], args[2], geometry_crs=_crs_arg(args, 3),
                                      on_error="null" if safe else "raise", context=state)

    return load_bands_raw


def make_zonal_stats(state: State) -> Udf:
    """zonal_stats(record, geom, band[, crs]): statistics of the valid pixels inside the AOI."""

    def zonal_stats(*args: Any) -> pa.Array:
        _arity("zonal_stats", args, 3, 4, "(record, geom, band[, geom_crs])")
        return K.zonal_stats_arrow(args[0], args[1], args[2], geometry_crs=_crs_arg(args, 3), context=state)

    return zonal_stats


def make_pixel_values(state: State) -> Udf:
    """pixel_values(record, point, bands[, crs]) -> DOUBLE[]: the pixel under each point, per band."""

    def pixel_values(*args: Any) -> pa.Array:
        _arity("pixel_values", args, 3, 4, "(record, point, bands[, geom_crs])")
        return K.pixel_values_arrow(args[0], args[1], args[2], geometry_crs=_crs_arg(args, 3), context=state)

    return pixel_values


def make_raster_intersects(state: State) -> Udf:
    """raster_intersects(record, geom[, crs]): whether the AOI meets the record's footprint."""

    def raster_intersects(*args: Any) -> pa.Array:
        _arity("raster_intersects", args, 2, 3, "(record, geom[, geom_crs])")
        return K.intersects_arrow(args[0], args[1], geometry_crs=_crs_arg(args, 2), context=state)

    return raster_intersects


# ---- read_cog_metadata ---------------------------------------------------------------------------
def _headers(state: State, urls: Sequence[str]) -> dict[str, Any]:
    from ..build.api import read_headers

    out: dict[str, Any] = {}
    missing = []
    for u in dict.fromkeys(urls):
        h = state.cached_header(u)
        if h is None:
            missing.append(u)
        else:
            out[u] = h
    if missing:
        got = state.run(read_headers(missing, state.backend))
        for u, h in got.items():
            if not isinstance(h, BaseException):
                state.cache_header(u, h)
            out[u] = h
    return out


def make_read_cog_metadata(state: State) -> Udf:
    """read_cog_metadata(href[, band_index]) -> the `{band}_metadata` struct of one sample of a COG."""
    from ..core.metadata import metadata_array, metadata_from_header

    def read_cog_metadata(*args: Any) -> pa.Array:
        _arity("read_cog_metadata", args, 1, 2, "(href[, band_index])")
        urls: list[str | None] = [str(u) if u is not None else None for u in _pylist(args[0])]
        idx = [int(v or 0) for v in _pylist(args[1])] if len(args) > 1 else [0] * len(urls)
        headers = _headers(state, [u for u in urls if u is not None])
        metas: list[CogMetadata | None] = []
        for u, k in zip(urls, idx, strict=True):
            if u is None:
                metas.append(None)
                continue
            h = headers[u]
            if isinstance(h, BaseException):
                raise h
            metas.append(metadata_from_header(h, k))
        return metadata_array(metas)

    return read_cog_metadata


def make_read_cog_crs(state: State) -> Udf:
    """read_cog_crs(href) -> 'EPSG:n' (or WKT) of a COG, for the `crs` column of a collection built in SQL."""
    from ..core.metadata import header_crs

    def read_cog_crs(*args: Any) -> pa.Array:
        _arity("read_cog_crs", args, 1, 1, "(href)")
        urls: list[str | None] = [str(u) if u is not None else None for u in _pylist(args[0])]
        headers = _headers(state, [u for u in urls if u is not None])
        out: list[str | None] = []
        for u in urls:
            if u is None:
                out.append(None)
                continue
            h = headers[u]
            if isinstance(h, BaseException):
                raise h
            out.append(header_crs(h))
        return ab.array_of(out, pa.string())

    return read_cog_crs


# ---- Apache Sedona RS_* names --------------------------------------------------------------------
def _first_band_meta(recs: ChunkRecords, i: int) -> Any:
    codes = recs.ordered_bands(i)
    if not codes:
        raise RasterduckError("the record has no bands", record_id=recs.ids[i])
    return recs.source(i, codes[0]).meta


def make_rs_dimension(state: State, what: str) -> Udf:
    """RS_Width / RS_Height / RS_NumBands / RS_SRID of a record (first band's grid)."""

    def rs_dimension(*args: Any) -> pa.Array:
        _arity(f"RS_{what}", args, 1, 1, "(raster)")
        recs = ChunkRecords(args[0], state.cache, state.data_sources())
        out: list[int | None] = []
        for i in range(len(recs)):
            if not recs.valid[i]:
                out.append(None)
            elif what == "NumBands":
                out.append(len(recs.ordered_bands(i)))
            elif what == "SRID":
                c = recs.crs[i]
                out.append(int(c[5:]) if c and c.upper().startswith("EPSG:") and c[5:].isdigit() else 0)
            else:
                m = _first_band_meta(recs, i)
                out.append(m.image_width if what == "Width" else m.image_height)
        return ab.array_of(out, pa.int32())

    return rs_dimension


def _band_codes(recs: ChunkRecords, values: Any | None) -> list[list[str] | None]:
    """Sedona band arguments (1-based number or code; default 1) as band code lists (None: NULL row)."""
    given = _pylist(values) if values is not None else [1] * len(recs)
    return [[recs.band_by_number(i, v if v is not None else 1)] if recs.valid[i] else None
            for i, v in enumerate(given)]


def make_rs_value(state: State) -> Udf:
    """RS_Value(raster, point[, band]) -> DOUBLE: the pixel under the point; NULL outside or nodata."""

    def rs_value(*args: Any) -> pa.Array:
        _arity("RS_Value", args, 2, 3, "(raster, point[, band])")
        recs = ChunkRecords(args[0], state.cache, state.data_sources())
        bands = _band_codes(recs, args[2] if len(args) > 2 else None)
        rows = read_pairs(state, recs, K.point_geoms(parse_geoms(args[1])), bands, [AOI_CRS] * len(recs))
        K.raise_first(rows)
        lists = K.values_array(rows)
        return ab.array_of([v[0] if v else None for v in lists.to_pylist()], pa.float64())

    return rs_value


_STAT_NAMES = {"count": "count", "sum": "sum", "mean": "mean", "average": "mean", "avg": "mean",
               "median": "median", "mode": "mode", "stddev": "stddev", "sd": "stddev", "variance": "variance",
               "min": "min", "max": "max"}


def sedona_stats(vals: np.ndarray) -> dict[str, float | None]:
    """Sedona's zonal statistics of some pixel values (population stddev/variance; mode: smallest tie)."""
    if vals.size == 0:
        return {k: (0.0 if k == "count" else None) for k in set(_STAT_NAMES.values())}
    uniq, counts = np.unique(vals, return_counts=True)
    return {
        "count": float(vals.size), "sum": float(vals.sum()), "mean": float(vals.mean()),
        "median": float(np.median(vals)), "mode": float(uniq[int(np.argmax(counts))]),
        "stddev": float(vals.std()), "variance": float(vals.var()), "min": float(vals.min()),
        "max": float(vals.max()),
    }


def _zonal_rows(state: State, args: Sequence[Any], band_pos: int | None, flags_pos: int
                ) -> tuple[list[dict[str, float | None] | None], ChunkRecords]:
    recs = ChunkRecords(args[0], state.cache, state.data_sources())
    n = len(recs)
    geoms = parse_geoms(args[1])
    bands = _band_codes(recs, args[band_pos] if band_pos is not None and len(args) > band_pos else None)
    flag = [_pylist(args[k]) if len(args) > k else None for k in range(flags_pos, flags_pos + 3)]
    all_touched = [bool(v) for v in flag[0]] if flag[0] is not None else [False] * n
    exclude = [v is None or bool(v) for v in flag[1]] if flag[1] is not None else [True] * n
    lenient = [v is None or bool(v) for v in flag[2]] if flag[2] is not None else [True] * n
    rows: list[Row] = [None] * n
    for touched in (False, True):  # all_touched is per request; split the call in two batches at most
        part = [i for i in range(n) if all_touched[i] == touched]
        if not part:
            continue
        chosen = set(part)
        sub = read_pairs(state, recs, [geoms[i] if i in chosen else None for i in range(n)], bands,
                         [AOI_CRS] * n, all_touched=touched)
        for i in part:
            rows[i] = sub[i]
    K.raise_first(rows)
    out: list[dict[str, float | None] | None] = []
    for i, r in enumerate(rows):
        if not isinstance(r, ReadResult):
            if not lenient[i]:
                raise RasterduckError("the zone does not intersect the raster (lenient = false)",
                                      record_id=recs.ids[i])
            out.append(None)
            continue
        g = geoms[i]
        assert isinstance(g, BaseGeometry)
        inside = K.aoi_mask(state, r, g, AOI_CRS, all_touched[i])
        out.append(sedona_stats(K.stat_values(r, inside, 0, exclude[i])))
    return out, recs


def make_rs_zonal_stats(state: State) -> Udf:
    """RS_ZonalStats(raster, zone[, band], statType[, allTouched[, excludeNoData[, lenient]]]) -> DOUBLE."""

    def rs_zonal_stats(*args: Any) -> pa.Array:
        _arity("RS_ZonalStats", args, 3, 7,
               "(raster, zone[, band], statType[, allTouched[, excludeNoData[, lenient]]])")
        has_band = len(args) > 3  # Sedona: (raster, zone, statType) or (raster, zone, band, statType, ...)
        stat_pos = 3 if has_band else 2
        stat_names = _pylist(args[stat_pos])
        rows, _recs = _zonal_rows(state, args, 2 if has_band else None, stat_pos + 1)
        out: list[float | None] = []
        for s, name in zip(rows, stat_names, strict=True):
            key = _STAT_NAMES.get(str(name).lower()) if name is not None else None
            if key is None:
                raise RasterduckError(f"unknown statType {name!r}; expected one of {sorted(_STAT_NAMES)}")
            out.append(None if s is None else s[key])
        return ab.array_of(out, pa.float64())

    return rs_zonal_stats


_SEDONA_STATS = pa.struct([(k, pa.float64()) for k in
                           ("count", "sum", "mean", "median", "mode", "stddev", "variance", "min", "max")])


def make_rs_zonal_stats_all(state: State) -> Udf:
    """RS_ZonalStatsAll(raster, zone[, band[, allTouched[, excludeNoData[, lenient]]]]) -> STRUCT."""

    def rs_zonal_stats_all(*args: Any) -> pa.Array:
        _arity("RS_ZonalStatsAll", args, 2, 6, "(raster, zone[, band[, allTouched[, excludeNoData[, lenient]]]])")
        rows, _recs = _zonal_rows(state, args, 2, 3)
        return struct_of_dicts(rows, _SEDONA_STATS)  # type: ignore[arg-type]

    return rs_zonal_stats_all


def make_rs_band_as_array(state: State) -> Udf:
    """RS_BandAsArray(raster, band) -> DOUBLE[]: the whole band, row-major (nodata values included)."""

    def rs_band_as_array(*args: Any) -> pa.Array:
        _arity("RS_BandAsArray", args, 2, 2, "(raster, band)")
        recs = ChunkRecords(args[0], state.cache, state.data_sources())
        bands = _band_codes(recs, args[1])
        boxes: list[BaseGeometry | RasterduckError | None] = []
        for i in range(len(recs)):
            codes = bands[i]
            if codes is None:
                boxes.append(None)
                continue
            m = recs.source(i, codes[0]).meta
            a, _b, c, _d, e, f = m.affine
            xs = sorted((c, c + a * m.image_width))
            ys = sorted((f, f + e * m.image_height))
            boxes.append(shapely.box(xs[0], ys[0], xs[1], ys[1]))
        rows = read_pairs(state, recs, boxes, bands, [None] * len(recs), all_touched=True)
        K.raise_first(rows)
        arrays = [r.data[0].reshape(-1).astype(np.float64) for r in rows if isinstance(r, ReadResult)]
        sizes = np.array([r.height * r.width if isinstance(r, ReadResult) else 0 for r in rows], dtype=np.int64)
        flat = np.concatenate(arrays) if arrays else np.empty(0, np.float64)
        missed = np.array([not isinstance(r, ReadResult) for r in rows], dtype=bool)
        return ab.lists(sizes, ab.numeric(flat), missed)

    return rs_band_as_array


__all__ = ["SEDONA_STATS_TYPE", "ZONAL_TYPE", "make_load_bands", "parse_geoms", "read_pairs"]
