"""The Python UDFs behind rasterduck's SQL functions (registration is in register.py).

Every function is an Arrow UDF registered with open (varargs) parameters, so one name accepts any
collection row STRUCT, GEOMETRY / WKB BLOB / WKT VARCHAR AOIs, and optional trailing arguments.
One UDF call plans all its rows together: a single `read_batch` per call, so a tile several rows need
is fetched and decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from shapely.geometry.base import BaseGeometry

from ..core.geometry import to_shapely, transform_geometry, wkb_array_to_shapely
from ..core.metadata import CogMetadata
from ..core.rasterize import geometry_mask
from ..core.read import ReadRequest, ReadResult, read_batch
from ..errors import GeometryError, RasterduckError
from .records import ChunkRecords, combine
from .results import Row, load_bands_array, struct_of_dicts
from .state import State
from .types import SEDONA_STATS_TYPE, ZONAL_TYPE

Udf = Callable[..., pa.Array]
AOI_CRS = "EPSG:4326"


# ---- argument helpers ----------------------------------------------------------------------------
def _arity(name: str, args: Sequence[Any], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise RasterduckError(f"{name} takes {usage}; got {len(args)} argument(s)")


def _pylist(values: Any) -> list[Any]:
    return combine(values).to_pylist()  # type: ignore[no-any-return]


def parse_geoms(values: Any) -> list[BaseGeometry | RasterduckError | None]:
    """AOIs of one call (WKB/GEOMETRY, WKT text); a bad entry becomes its GeometryError."""
    arr = combine(values)
    try:
        return list(wkb_array_to_shapely(arr))
    except GeometryError:
        out: list[BaseGeometry | RasterduckError | None] = []
        for v in arr.to_pylist():
            try:
                out.append(to_shapely(v) if v is not None else None)
            except GeometryError as exc:
                out.append(exc)
        return out


def crs_list(args: Sequence[Any], pos: int, n: int) -> list[str]:
    """The AOI CRS of each row: the optional argument at `pos` (text or EPSG number), else EPSG:4326."""
    if len(args) <= pos:
        return [AOI_CRS] * n
    out = []
    for v in _pylist(args[pos]):
        if v is None:
            out.append(AOI_CRS)
        elif isinstance(v, int | float):
            out.append(f"EPSG:{int(v)}")
        else:
            out.append(str(v))
    return out


def band_lists(values: Any) -> list[list[str] | None]:
    """The bands argument: VARCHAR[] per row, or one VARCHAR (None where NULL)."""
    arr = combine(values)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        return [[v] if v is not None else None for v in arr.to_pylist()]
    return [list(v) if v is not None else None for v in arr.to_pylist()]


# ---- reading -------------------------------------------------------------------------------------
def read_pairs(state: State, recs: ChunkRecords, geoms: Sequence[BaseGeometry | RasterduckError | None],
               bands: Sequence[Sequence[str] | None], crs: Sequence[str | None], *, all_touched: bool = False
               ) -> list[Row]:
    """One read_batch over every (record, AOI, bands) row of the call; per row a result, None or error.

    Rows with a NULL record, AOI or band list give None (SQL NULL)."""
    n = len(recs)
    out: list[Row] = [None] * n
    reqs: list[ReadRequest] = []
    where: list[int] = []
    for i in range(n):
        g = geoms[i]
        rid = recs.ids[i]
        codes = bands[i]
        if g is None or codes is None or not recs.valid[i]:
            continue
        if isinstance(g, RasterduckError):
            out[i] = g.with_context(record_id=rid)
            continue
        if not codes:
            out[i] = RasterduckError("no bands requested", record_id=rid)
            continue
        try:
            srcs = recs.sources(i, codes)
        except RasterduckError as exc:
            out[i] = exc
            continue
        g_crs: str | None = crs[i]
        raster_crs = srcs[0].meta.crs
        if g_crs is not None and raster_crs is not None and g.geom_type != "Point":
            try:  # joins repeat each AOI for every record on the same grid: move it once
                g, g_crs = state.geometry_in(g, g_crs, raster_crs), raster_crs
            except RasterduckError as exc:
                out[i] = exc.with_context(record_id=rid)
                continue
        reqs.append(ReadRequest(rid, g, g_crs, srcs, all_touched))
        where.append(i)
    if reqs:
        results = state.run(read_batch(reqs, state.backend, pixel_budget=state.pixel_budget))
        for i, req, r in zip(where, reqs, results, strict=True):
            out[i] = _with_band(r, req) if isinstance(r, BaseException) else r
    return out


def _with_band(exc: BaseException, req: ReadRequest) -> BaseException:
    """Make a read error name its band: the one whose URL failed, or the only one requested."""
    if not isinstance(exc, RasterduckError):
        src = req.bands[0] if req.bands else None
        return RasterduckError(f"{type(exc).__name__}: {exc}", record_id=req.record_id,
                               band=src.band if src and len(req.bands) == 1 else None,
                               url=src.url if src and len(req.bands) == 1 else None)
    if exc.band is None:
        match = [s for s in req.bands if s.url == exc.url] if exc.url else []
        if len(req.bands) == 1:
            match = list(req.bands)
        if match:
            exc.with_context(band=match[0].band if len(match) == 1 else ",".join(s.band for s in match),
                             url=match[0].url)
    return exc.with_context(record_id=req.record_id)


def _raise_first(rows: Sequence[Row]) -> None:
    for r in rows:
        if isinstance(r, BaseException):
            raise r


def aoi_mask(state: State, r: ReadResult, geom: BaseGeometry, geom_crs: str | None,
             all_touched: bool = False) -> np.ndarray:
    """Pixels of a result's window inside the AOI (GDAL's rule), whatever their data."""
    g = geom
    if geom_crs is not None and r.crs is not None:
        g = state.geometry_in(geom, geom_crs, r.crs)
    if g.geom_type == "Point":
        return np.ones((r.height, r.width), dtype=bool)
    return geometry_mask(g, (r.height, r.width), r.transform, all_touched=all_touched)


def _stat_values(r: ReadResult, inside: np.ndarray, band: int, exclude_nodata: bool) -> np.ndarray:
    px = r.data[band]
    sel = r.valid if exclude_nodata else inside
    vals = px[sel].astype(np.float64)
    if exclude_nodata and px.dtype.kind == "f":
        vals = vals[~np.isnan(vals)]
    return vals


# ---- load_bands ----------------------------------------------------------------------------------
def make_load_bands(state: State, dtype: str, *, safe: bool) -> Udf:
    """load_bands(record, geom, bands[, crs]) with pixels of `dtype` (safe: NULL + error per bad row)."""
    target = np.dtype(dtype)

    def load_bands(*args: Any) -> pa.Array:
        _arity("load_bands", args, 3, 4, "(record, geom, bands[, geom_crs])")
        recs = ChunkRecords(args[0], state.cache, state.data_sources())
        rows = read_pairs(state, recs, parse_geoms(args[1]), band_lists(args[2]), crs_list(args, 3, len(recs)))
        return load_bands_array(rows, target, safe=safe)

    return load_bands


# ---- zonal statistics and point values ------------------------------------------------------------
_ZONAL = pa.struct([("count", pa.int64()), ("valid_count", pa.int64()), ("min", pa.float64()),
                    ("max", pa.float64()), ("mean", pa.float64()), ("std", pa.float64()), ("sum", pa.float64())])


def make_zonal_stats(state: State) -> Udf:
    """zonal_stats(record, geom, band[, crs]): statistics of the valid pixels inside the AOI."""

    def zonal_stats(*args: Any) -> pa.Array:
        _arity("zonal_stats", args, 3, 4, "(record, geom, band[, geom_crs])")
        recs = ChunkRecords(args[0], state.cache, state.data_sources())
        geoms = parse_geoms(args[1])
        crs = crs_list(args, 3, len(recs))
        rows = read_pairs(state, recs, geoms, band_lists(args[2]), crs)
        _raise_first(rows)
        out: list[dict[str, object] | None] = []
        for i, r in enumerate(rows):
            if not isinstance(r, ReadResult):
                out.append(None)
                continue
            g = geoms[i]
            assert isinstance(g, BaseGeometry)
            inside = aoi_mask(state, r, g, crs[i])
            vals = _stat_values(r, inside, 0, True)
            stats: dict[str, object] = {"count": int(inside.sum()), "valid_count": int(vals.size)}
            if vals.size:
                stats.update(min=float(vals.min()), max=float(vals.max()), mean=float(vals.mean()),
                             std=float(vals.std()), sum=float(vals.sum()))
            out.append(stats)
        return struct_of_dicts(out, _ZONAL)

    return zonal_stats


def _points(geoms: Sequence[BaseGeometry | RasterduckError | None]) -> list[BaseGeometry | RasterduckError | None]:
    out: list[BaseGeometry | RasterduckError | None] = []
    for g in geoms:
        if isinstance(g, BaseGeometry) and g.geom_type != "Point":
            out.append(GeometryError(f"expected a POINT, got a {g.geom_type}"))
        else:
            out.append(g)
    return out


def _values_array(rows: Sequence[Row]) -> pa.Array:
    """DOUBLE[] per row: each band's value, NULL where the pixel is not valid; NULL row when missed."""
    flat: list[float | None] = []
    sizes = np.zeros(len(rows), dtype=np.int64)
    mask = np.ones(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        if not isinstance(r, ReadResult):
            continue
        ok = bool(r.valid[0, 0])
        flat.extend(float(v) if ok else None for v in r.data[:, 0, 0])
        sizes[i] = len(r.bands)
        mask[i] = False
    off = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(sizes, out=off[1:])
    return pa.ListArray.from_arrays(pa.array(off), pa.array(flat, pa.float64()), mask=pa.array(mask))


def make_pixel_values(state: State) -> Udf:
    """pixel_values(record, point, bands[, crs]) -> DOUBLE[]: the pixel under each point, per band."""

    def pixel_values(*args: Any) -> pa.Array:
        _arity("pixel_values", args, 3, 4, "(record, point, bands[, geom_crs])")
        recs = ChunkRecords(args[0], state.cache, state.data_sources())
        rows = read_pairs(state, recs, _points(parse_geoms(args[1])), band_lists(args[2]),
                          crs_list(args, 3, len(recs)))
        _raise_first(rows)
        return _values_array(rows)

    return pixel_values


# ---- raster_intersects ---------------------------------------------------------------------------
def footprint_geoms(recs: ChunkRecords) -> list[BaseGeometry | None]:
    """Each record's footprint (CRS84): the geometry column, else its bbox, else from band metadata."""
    from ..core.collection import record_footprint

    wkbs = recs.footprints()
    boxes = recs.bboxes()
    parsed: dict[object, BaseGeometry | None] = {}
    out: list[BaseGeometry | None] = []
    for i in range(len(recs)):
        if not recs.valid[i]:
            out.append(None)
            continue
        key: object = wkbs[i] if wkbs[i] is not None else boxes[i] if boxes[i] is not None else ("row", i)
        if key in parsed:
            out.append(parsed[key])
            continue
        g: BaseGeometry | None = None
        if wkbs[i] is not None:
            try:
                g = shapely.from_wkb(wkbs[i])
            except shapely.errors.GEOSException:
                g = None
        if g is None and boxes[i] is not None:
            g = shapely.box(*boxes[i])  # type: ignore[misc]
        if g is None:
            codes = recs.ordered_bands(i)
            if codes:
                m = recs.source(i, codes[0]).meta
                g = shapely.from_wkb(record_footprint(m.image_width, m.image_height, m.affine, recs.crs[i])[0])
        parsed[key] = g
        out.append(g)
    return out


def make_raster_intersects(state: State) -> Udf:
    """raster_intersects(record, geom[, crs]): whether the AOI meets the record's footprint."""

    def raster_intersects(*args: Any) -> pa.Array:
        _arity("raster_intersects", args, 2, 3, "(record, geom[, geom_crs])")
        recs = ChunkRecords(args[0], state.cache, state.data_sources())
        geoms = parse_geoms(args[1])
        crs = crs_list(args, 2, len(recs))
        feet = footprint_geoms(recs)
        a = np.empty(len(recs), dtype=object)
        b = np.empty(len(recs), dtype=object)
        for i, g in enumerate(geoms):
            if isinstance(g, RasterduckError):
                raise g.with_context(record_id=recs.ids[i])
            if g is not None and crs[i] != AOI_CRS:
                g = transform_geometry(g, crs[i], AOI_CRS)
            a[i], b[i] = feet[i], g
        res = shapely.intersects(a, b)
        valid = np.array([f is not None and g is not None for f, g in zip(a, b, strict=True)])
        return pa.array(np.asarray(res, dtype=bool), pa.bool_(), mask=~valid)

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
        return pa.array(out, pa.string())

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
        return pa.array(out, pa.int32())

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
        rows = read_pairs(state, recs, _points(parse_geoms(args[1])), bands, [AOI_CRS] * len(recs))
        _raise_first(rows)
        lists = _values_array(rows)
        return pa.array([v[0] if v else None for v in lists.to_pylist()], pa.float64())

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
    _raise_first(rows)
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
        inside = aoi_mask(state, r, g, AOI_CRS, all_touched[i])
        out.append(sedona_stats(_stat_values(r, inside, 0, exclude[i])))
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
        return pa.array(out, pa.float64())

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
        _raise_first(rows)
        arrays = [r.data[0].reshape(-1).astype(np.float64) for r in rows if isinstance(r, ReadResult)]
        sizes = np.array([r.height * r.width if isinstance(r, ReadResult) else 0 for r in rows], dtype=np.int64)
        off = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(sizes, out=off[1:])
        flat = np.concatenate(arrays) if arrays else np.empty(0, np.float64)
        mask = pa.array([not isinstance(r, ReadResult) for r in rows])
        if off[-1] < 2**31:
            return pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(flat), mask=mask)
        return pa.LargeListArray.from_arrays(pa.array(off), pa.array(flat), mask=mask)

    return rs_band_as_array


__all__ = ["SEDONA_STATS_TYPE", "ZONAL_TYPE", "make_load_bands", "parse_geoms", "read_pairs"]
