"""Shapes of read results: the dependency-free ReadResult list, xarray.Dataset and GeoDataFrame; and the
Python entry points that build the read requests (`RasterAccessor.load_bands`, `Collection.read`).

AOIs may be GeoArrow arrays (WKB or native: geoarrow.point/linestring/polygon/multi*), shapely geometries,
WKB bytes, WKT, GeoJSON-like dicts or (minx, miny, maxx, maxy) boxes (see geometry.py).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import BandNotFoundError, GeometryError, PixelBudgetExceeded, RasterduckError
from .geobox import is_rectilinear, window_transform
from .geometry import to_shapely_list, transform_geometry
from .read import (
    DEFAULT_PIXEL_BUDGET,
    ReadRequest,
    ReadResult,
    ReadStats,
    band_sources,
    impossible_coordinates,
    misplaced_aoi,
    read_batch,
)
from .window import Window

if TYPE_CHECKING:
    from .accessor import RasterAccessor
    from .collection import Collection

OUTPUTS = ("xarray", "geodataframe", "results")
_GEOARROW_NATIVE = {
    "geoarrow.point": shapely.GeometryType.POINT,
    "geoarrow.linestring": shapely.GeometryType.LINESTRING,
    "geoarrow.polygon": shapely.GeometryType.POLYGON,
    "geoarrow.multipoint": shapely.GeometryType.MULTIPOINT,
    "geoarrow.multilinestring": shapely.GeometryType.MULTILINESTRING,
    "geoarrow.multipolygon": shapely.GeometryType.MULTIPOLYGON,
}
_BACKENDS: dict[int, Any] = {}
_BACKENDS_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------------
# inputs


def aoi_list(geometries: Any) -> list[BaseGeometry]:
    """AOIs in any accepted form as shapely geometries (GeoArrow native arrays included)."""
    if isinstance(geometries, pa.ChunkedArray):
        out: list[BaseGeometry] = []
        for chunk in geometries.chunks:
            out.extend(aoi_list(chunk))
        return out
    if isinstance(geometries, pa.ExtensionArray):
        name = getattr(geometries.type, "extension_name", "")
        if name in _GEOARROW_NATIVE:
            return _from_geoarrow(geometries.storage, _GEOARROW_NATIVE[name])
    return to_shapely_list(geometries)


def _from_geoarrow(storage: pa.Array, kind: shapely.GeometryType) -> list[BaseGeometry]:
    """Decode a native GeoArrow array (nested lists over struct<x, y> or fixed-size-list coordinates)."""
    if storage.null_count:
        raise GeometryError("NULL AOIs in the GeoArrow array")
    offsets: list[np.ndarray] = []
    arr: Any = storage
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        off = np.asarray(arr.offsets, dtype=np.int64)
        offsets.append(off - off[0])
        arr = arr.flatten()
    if pa.types.is_struct(arr.type):
        coords = np.column_stack([np.asarray(arr.field(i), dtype=float) for i in range(min(2, arr.type.num_fields))])
    elif pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        coords = np.asarray(arr.flatten(), dtype=float).reshape(-1, size)[:, :2]
    else:
        raise GeometryError(f"unsupported GeoArrow coordinate type {arr.type}")
    # shapely wants the innermost offsets (coordinates per ring/part) first
    geoms = shapely.from_ragged_array(kind, coords, tuple(reversed(offsets)) if offsets else None)
    return to_shapely_list(list(geoms))


def crs_string(crs: int | str | None) -> str | None:
    """An EPSG number or any CRS text as the string form the kernel takes (None stays None)."""
    if crs is None:
        return None
    if isinstance(crs, int) and not isinstance(crs, bool):
        return f"EPSG:{crs}"
    return str(crs)


def backend_for(backend: Any, max_concurrent: int) -> Any:
    """`backend` if given; else the process-wide backend, or one with its own `max_concurrent` limit."""
    if backend is not None:
        return backend
    from ..io.backend import DefaultBackend
    from ..io.loop import get_default_backend, register_closer

    default = get_default_backend()
    if not isinstance(default, DefaultBackend) or default.limiter.limit == max_concurrent:
        return default
    with _BACKENDS_LOCK:
        be = _BACKENDS.get(max_concurrent)
        if be is None:
            be = _BACKENDS[max_concurrent] = DefaultBackend(policy=default.policy, http=default.options,
                                                            max_concurrent=max_concurrent)
            register_closer(be.close)
    return be


# ---------------------------------------------------------------------------------------------------
# reading


async def read_accessor(
    accessor: RasterAccessor,
    geometries: Any,
    band_codes: Sequence[str],
    *,
    max_concurrent: int = 50,
    backend: Any = None,
    geometry_crs: int | str | None = 4326,
    all_touched: bool = False,
    pixel_budget: int | None = DEFAULT_PIXEL_BUDGET,
    raise_errors: bool = True,
    stats: ReadStats | None = None,
) -> list[ReadResult | BaseException | None]:
    """Read every AOI of one record in one batch; per AOI a ReadResult or None (it misses the raster)."""
    geoms = aoi_list(geometries)
    crs = crs_string(geometry_crs)
    sources = band_sources(accessor, band_codes)
    reqs = [ReadRequest(accessor.id, g, crs, sources, all_touched, geometry_index=i) for i, g in enumerate(geoms)]
    results = await read_batch(reqs, backend_for(backend, max_concurrent), pixel_budget=pixel_budget, stats=stats)
    if raise_errors:
        _raise_first(results)
    return results


def _raise_first(results: Sequence[ReadResult | BaseException | None]) -> None:
    for r in results:
        if isinstance(r, BaseException):
            raise r


_LONLAT = frozenset({"EPSG:4326", "OGC:CRS84"})


def _lonlat_bounds(geom: BaseGeometry, crs: str | None) -> tuple[float, float, float, float] | None:
    """The AOI's bounds in lon/lat (None when it has no CRS or cannot be moved)."""
    if crs is None:
        return None
    try:  # EPSG:4326 in x/y = lon/lat order (how AOIs are read) is CRS84 already: no PROJ call per AOI
        moved = geom if crs in _LONLAT else transform_geometry(geom, crs, "OGC:CRS84")
    except (GeometryError, ValueError):
        return None
    b = moved.bounds
    return b if all(math.isfinite(v) for v in b) else None


async def read_collection(
    collection: Collection,
    geometries: Any,
    bands: Sequence[str],
    *,
    geometry_crs: int | str | None = 4326,
    all_touched: bool = False,
    target_crs: int | str | None = None,
    resampling: str = "nearest",
    resolution: float | None = None,
    backend: Any = None,
    max_concurrent: int = 50,
    pixel_budget: int | None = DEFAULT_PIXEL_BUDGET,
    raise_errors: bool = True,
    stats: ReadStats | None = None,
) -> list[ReadResult | BaseException]:
    """Every (AOI, record) pair whose footprints overlap, planned and read as one batch.

    Records are matched by their lon/lat bbox; with AOIs in pixel space (`geometry_crs=None`) every record
    is read. Results come per AOI in record order, each tagged with `geometry_index`; pairs that miss are
    left out; failed pairs raise (or are returned in place when `raise_errors=False`). Records lacking
    a band are skipped (BandNotFoundError when no overlapping record has the bands).
    """
    geoms = aoi_list(geometries)
    crs = crs_string(geometry_crs)
    boxes = [_lonlat_bounds(g, crs) for g in geoms]
    reqs: list[ReadRequest] = []
    missing: BandNotFoundError | None = None
    matched = [False] * len(geoms)
    # in a large collection only records whose bbox meets an AOI's are converted (a 20,000-record
    # collection: 1.5 s -> 0.08 s for one field); a small one is cheaper to walk than to index (~0.7 ms)
    rows = collection.overlapping(boxes) if crs is not None and len(collection) > 64 else None
    for acc in collection.rasters_at(rows, list(bands)):
        rb = acc.info.bbox
        hits = [i for i, b in enumerate(boxes)
                if crs is None or (rb is not None and (b is None or _overlap(rb, b)))]
        for i in hits:
            matched[i] = True
        if not hits:
            continue
        try:
            sources = band_sources(acc, bands)
        except BandNotFoundError as exc:  # a record without these bands is no candidate
            missing = missing or exc
            continue
        reqs.extend(ReadRequest(acc.id, geoms[i], crs, sources, all_touched, geometry_index=i) for i in hits)
    unmatched = [i for i, m in enumerate(matched) if not m] if crs is not None else []
    if unmatched:
        assert crs is not None
        footprints = _footprints(collection)
        for i in unmatched:
            _check_unmatched(geoms[i], crs, boxes[i], footprints, i)
    if not reqs and missing is not None:
        raise missing  # no overlapping record has the bands: most likely a wrong band name
    order = sorted(range(len(reqs)), key=lambda k: reqs[k].geometry_index or 0)
    reqs = [reqs[k] for k in order]
    results = await read_batch(reqs, backend_for(backend, max_concurrent), pixel_budget=pixel_budget, stats=stats)
    if raise_errors:
        _raise_first(results)
    if target_crs is not None:
        from .warp import warp_results

        results = warp_results(results, crs_string(target_crs) or "", resampling=resampling, resolution=resolution)
    return [r for r in results if r is not None]


def _footprints(collection: Collection) -> list[tuple[tuple[float, float, float, float], str | None, str]]:
    """(lon/lat bbox, raster CRS, id) of every record that has a bbox."""
    rb = collection.bboxes()
    return [((float(b[0]), float(b[1]), float(b[2]), float(b[3])), c, i)
            for b, c, i in zip(rb, collection.record_crs(), collection.record_ids(), strict=True)
            if not np.isnan(b).any()]


def _check_unmatched(geom: BaseGeometry, crs: str, box: tuple[float, float, float, float] | None,
                     footprints: Sequence[tuple[tuple[float, float, float, float], str | None, str]],
                     index: int) -> None:
    """An AOI that overlaps no record is fine (no result), unless it overlaps a record with x and y
    swapped while outside where that record's CRS is used (see `misplaced_aoi`), or its coordinates
    are impossible in its CRS (metres passed as degrees): GeometryError."""
    if box is not None:
        swapped = _swap(box)
        for rbox, raster_crs, rid in footprints:
            if not _overlap(rbox, swapped):  # cheap filter: only records the swapped AOI could overlap
                continue
            msg = misplaced_aoi(geom, crs, raster_crs, partial(_box_hit, rbox))
            if msg is not None:
                raise GeometryError(f"AOI {index} overlaps no record: {msg}", record_id=rid)
    impossible = impossible_coordinates(geom, crs)
    if impossible is not None:
        raise GeometryError(f"AOI {index}: {impossible}")


def _swap(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    return (box[1], box[0], box[3], box[2])


def _box_hit(box: tuple[float, float, float, float], g: BaseGeometry) -> bool:
    return _overlap(box, g.bounds)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[2] >= b[0] and a[0] <= b[2] and a[3] >= b[1] and a[1] <= b[3]


# ---------------------------------------------------------------------------------------------------
# shaping


def _union(results: Sequence[ReadResult]) -> Window:
    """The block of the shared grid covering every result's window."""
    ws = [r.window or Window(0, 0, r.width, r.height) for r in results]
    c0, r0 = min(w.col_off for w in ws), min(w.row_off for w in ws)
    c1, r1 = max(w.col_stop for w in ws), max(w.row_stop for w in ws)
    return Window(c0, r0, c1 - c0, r1 - r0)


def _grid(r: ReadResult) -> tuple[float, ...]:
    return r.grid_transform if r.grid_transform is not None else r.transform


def _timestamp(value: dt.datetime | None) -> np.datetime64:
    if value is None:
        return np.datetime64("NaT", "ns")
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return np.datetime64(value, "ns")


def to_xarray(results: Sequence[ReadResult | BaseException | None], *, record_id: str = "",
              datetime: dt.datetime | None = None, pixel_budget: int | None = DEFAULT_PIXEL_BUDGET) -> Any:
    """An xarray.Dataset: one variable per band, dims (time, geometry, y, x) over the union of the windows.

    Coordinates are pixel centres of the shared grid (x, y in the CRS; column and row numbers on a
    rotated grid); `spatial_ref` holds the CRS WKT and the GDAL GeoTransform; pixels a geometry does not
    cover hold the fill value (`_FillValue`). Geometries are numbered from 1 in input order.
    """
    try:
        import xarray as xr
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("for_xarray=True needs xarray: pip install 'rasterduck[xarray]'") from exc
    good = [(i, r) for i, r in enumerate(results) if isinstance(r, ReadResult)]
    if not good:
        return xr.Dataset()
    first = good[0][1]
    grid = _grid(first)
    if any(_grid(r) != grid or r.crs != first.crs or r.bands != first.bands or r.dtype != first.dtype
           for _, r in good):
        raise RasterduckError("results are on different grids; use output='results'", record_id=record_id)
    u = _union([r for _, r in good])
    nbytes = len(good) * len(first.bands) * u.width * u.height * np.dtype(first.dtype).itemsize
    if pixel_budget is not None and nbytes > pixel_budget:
        raise PixelBudgetExceeded(f"the Dataset over the union of the AOIs would take {nbytes / 1e6:.1f} MB; "
                                  "use output='results' (one array per AOI) or fewer AOIs per call")
    cube = np.empty((len(first.bands), 1, len(good), u.height, u.width), dtype=np.dtype(first.dtype))
    cube[...] = np.asarray(first.nodata).astype(cube.dtype)
    for k, (_, r) in enumerate(good):
        w = r.window or Window(0, 0, r.width, r.height)
        cube[:, 0, k, w.row_off - u.row_off : w.row_stop - u.row_off,
             w.col_off - u.col_off : w.col_stop - u.col_off] = r.data
    a, b, c, d, e, f = grid
    cols = np.arange(u.col_off, u.col_stop, dtype=float) + 0.5
    rows = np.arange(u.row_off, u.row_stop, dtype=float) + 0.5
    if is_rectilinear((a, b, c, d, e, f)):
        xs, ys = c + cols * a, f + rows * e
    else:
        xs, ys = cols, rows
    coords = {"time": [_timestamp(datetime)], "geometry": [i + 1 for i, _ in good], "y": ys, "x": xs}
    ds = xr.Dataset({band: (("time", "geometry", "y", "x"), cube[i]) for i, band in enumerate(first.bands)},
                    coords=coords)
    ut = window_transform((a, b, c, d, e, f), u.col_off, u.row_off)
    ref = xr.DataArray(0)
    if first.crs:
        from pyproj import CRS

        crs = CRS.from_user_input(first.crs)
        ref.attrs.update(crs.to_cf())
        ref.attrs["crs_wkt"] = crs.to_wkt()
    ref.attrs["GeoTransform"] = " ".join(repr(float(v)) for v in (ut[2], ut[0], ut[1], ut[5], ut[3], ut[4]))
    ds = ds.assign_coords(spatial_ref=ref)
    for band in first.bands:
        ds[band].attrs["_FillValue"] = first.nodata
        ds[band].encoding["grid_mapping"] = "spatial_ref"
    ds.attrs.update({"record_id": record_id, "crs": first.crs or ""})
    return ds


def to_geodataframe(results: Sequence[ReadResult | BaseException | None], geometries: Sequence[BaseGeometry], *,
                    record_id: str = "", datetime: dt.datetime | None = None,
                    geometry_crs: int | str | None = 4326) -> Any:
    """A GeoDataFrame with one row per (geometry, band): the array, valid mask, transform, CRS, nodata."""
    try:
        import geopandas as gpd
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("for_xarray=False needs geopandas: pip install 'rasterduck[geopandas]'") from exc
    rows = []
    for gid, (g, r) in enumerate(zip(geometries, results, strict=True), start=1):
        if not isinstance(r, ReadResult):
            continue
        for i, band in enumerate(r.bands):
            rows.append({"record_id": record_id, "datetime": datetime, "geometry_id": gid, "geometry": g,
                         "band": band, "data": r.data[i], "valid": r.valid, "transform": r.transform,
                         "crs": r.crs, "nodata": r.nodata, "dtype": r.dtype})
    crs = crs_string(geometry_crs)
    if not rows:
        return gpd.GeoDataFrame({"record_id": [], "geometry_id": [], "band": [], "data": []}, geometry=[], crs=crs)
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


async def load_bands_output(accessor: RasterAccessor, geometries: Any, band_codes: Sequence[str], *,
                            max_concurrent: int = 50, for_xarray: bool = True, backend: Any = None,
                            target_crs: int | str | None = None, geometry_crs: int | str | None = 4326,
                            all_touched: bool = False, output: str | None = None, resampling: str = "nearest",
                            resolution: float | None = None, pixel_budget: int | None = DEFAULT_PIXEL_BUDGET,
                            stats: ReadStats | None = None) -> Any:
    """RasterAccessor.load_bands: read all AOIs in one batch, optionally warp to target_crs, shape."""
    kind = output if output is not None else ("xarray" if for_xarray else "geodataframe")
    if kind not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    geoms = aoi_list(geometries)
    results = await read_accessor(accessor, geoms, band_codes, max_concurrent=max_concurrent, backend=backend,
                                  geometry_crs=geometry_crs, all_touched=all_touched, pixel_budget=pixel_budget,
                                  stats=stats)
    if target_crs is not None:
        from .warp import warp_results

        results = warp_results(results, crs_string(target_crs) or "", resampling=resampling, resolution=resolution)
    if kind == "results":
        return results
    if kind == "xarray":
        return to_xarray(results, record_id=accessor.id, datetime=accessor.info.datetime, pixel_budget=pixel_budget)
    return to_geodataframe(results, geoms, record_id=accessor.id, datetime=accessor.info.datetime,
                           geometry_crs=geometry_crs)


__all__ = ["OUTPUTS", "aoi_list", "load_bands_output", "read_accessor", "read_collection", "to_geodataframe",
           "to_xarray"]
