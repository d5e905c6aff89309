"""AOI inputs to shapely geometries, and AOIs moved between CRSs vertex by vertex.

Accepted AOI forms: shapely geometries; WKB (ISO, extended with Z/M/SRID flags, OGC) as bytes,
bytearray or memoryview, also hex-encoded; WKT strings; GeoJSON-like dicts (geometries and Features)
or objects with `__geo_interface__`; (minx, miny, maxx, maxy) boxes; (x, y) points; and PyArrow
arrays of WKB (binary, large_binary, binary_view, or the `geoarrow.wkb` extension over them).
DuckDB 2.0's GEOMETRY type reaches Python (plain values and arrow UDF arguments) as ISO WKB, so it
needs nothing special; the internal blob that DuckDB 1.x's spatial extension used is not WKB and is
rejected with a hint to pass `ST_AsWKB(geom)` instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyproj
import shapely
import shapely.geometry
from shapely.errors import GEOSException
from shapely.geometry.base import BaseGeometry

from ..errors import GeometryError

CrsLike = int | str | pyproj.CRS

_WKB_TYPES = (pa.binary(), pa.large_binary(), pa.binary_view())
_HEX = frozenset("0123456789abcdefABCDEF")


def to_shapely(obj: Any) -> BaseGeometry:
    """One AOI, in any accepted form, as a non-empty shapely geometry; GeometryError otherwise."""
    geom = _parse_one(obj)
    if geom is None:
        raise GeometryError("the AOI is NULL")
    return geom


def to_shapely_list(obj: Any) -> list[BaseGeometry]:
    """Several AOIs (a sequence, NumPy array or PyArrow array) or a single one, as a list.

    A single AOI (a geometry, WKB value, dict, box or point tuple) gives a one-element list.
    NULL entries raise GeometryError; `to_shapely_nullable_list` keeps them as None.
    """
    out: list[BaseGeometry] = []
    for i, g in enumerate(to_shapely_nullable_list(obj)):
        if g is None:
            raise GeometryError(f"AOI {i} is NULL")
        out.append(g)
    return out


def to_shapely_nullable_list(obj: Any) -> list[BaseGeometry | None]:
    """Like `to_shapely_list`, but NULL entries (None, Arrow nulls) come back as None."""
    if isinstance(obj, pa.ChunkedArray | pa.Array):
        return wkb_array_to_shapely(obj)
    if _is_single(obj):
        return [_parse_one(obj)]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes | Mapping):
        return [_parse_one(item) for item in obj]
    return [_parse_one(obj)]


def wkb_array_to_shapely(arr: pa.Array | pa.ChunkedArray) -> list[BaseGeometry | None]:
    """Decode a PyArrow array of WKB (NULLs become None); a malformed or empty entry raises GeometryError."""
    if isinstance(arr, pa.ChunkedArray):
        out: list[BaseGeometry | None] = []
        for chunk in arr.chunks:
            out.extend(wkb_array_to_shapely(chunk))
        return out
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if arr.type == pa.string() or arr.type == pa.large_string():
        return [None if v is None else _parse_one(v) for v in arr.to_pylist()]
    if arr.type not in _WKB_TYPES:
        raise GeometryError(f"expected an array of WKB (binary), got {arr.type}")
    raw = arr.to_pylist()
    # a join repeats each AOI once per record: parse each distinct WKB once and share the object, so
    # per-geometry caches downstream (moved AOI, window, mask) hit by identity
    first: dict[bytes, int] = {}
    slot = [first.setdefault(v, len(first)) if v is not None else -1 for v in raw]
    distinct = np.empty(len(first), dtype=object)
    distinct[:] = list(first)
    try:
        geoms = shapely.from_wkb(distinct, on_invalid="raise")
    except (GEOSException, ValueError, TypeError):
        # Find which entry is bad, for the message.
        return [None if v is None else _from_wkb(v) for v in raw]
    checked: list[BaseGeometry | None] = [None] * len(geoms)
    result: list[BaseGeometry | None] = []
    for i, k in enumerate(slot):
        if k < 0:
            result.append(None)
            continue
        g = checked[k]
        if g is None:
            g = checked[k] = _check(geoms[k], f"AOI {i}")
        result.append(g)
    return result


def _is_single(obj: Any) -> bool:
    """True for inputs that are one AOI even though they may be iterable (boxes, points, WKB)."""
    if isinstance(obj, BaseGeometry | bytes | bytearray | memoryview | str | Mapping | pa.Scalar):
        return True
    if hasattr(obj, "__geo_interface__"):
        return True
    if isinstance(obj, np.ndarray):
        return obj.ndim == 1 and len(obj) in (2, 4) and obj.dtype.kind in "iuf"
    if isinstance(obj, tuple | list) and len(obj) in (2, 4):
        return all(isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) for v in obj)
    return False


def _parse_one(obj: Any) -> BaseGeometry | None:
    if isinstance(obj, pa.Scalar):
        obj = obj.as_py()
    if obj is None:
        return None
    if isinstance(obj, BaseGeometry):
        return _check(obj, "the AOI")
    if isinstance(obj, bytes | bytearray | memoryview):
        return _from_wkb(bytes(obj))
    if isinstance(obj, np.bytes_):
        return _from_wkb(bytes(obj))
    if isinstance(obj, str):
        return _from_text(obj)
    if isinstance(obj, Mapping) or hasattr(obj, "__geo_interface__"):
        return _from_geojson(obj)
    if isinstance(obj, tuple | list | np.ndarray) and len(obj) in (2, 4):
        try:
            vals = [float(v) for v in obj]
        except (TypeError, ValueError):
            vals = []
        if len(vals) == 4:
            return _from_box(vals[0], vals[1], vals[2], vals[3])
        if len(vals) == 2:
            return _check(shapely.Point(vals[0], vals[1]), "the point")
    raise GeometryError(f"cannot read an AOI from {type(obj).__name__}")


def _from_wkb(data: bytes) -> BaseGeometry:
    if len(data) < 5 or data[0] not in (0, 1):
        raise GeometryError(
            "the AOI is not WKB (it may be DuckDB spatial's internal GEOMETRY blob; pass ST_AsWKB(geom))"
        )
    try:
        geom = shapely.from_wkb(data, on_invalid="raise")
    except (GEOSException, ValueError, TypeError) as exc:
        raise GeometryError(f"malformed WKB: {exc}") from exc
    if geom is None:
        raise GeometryError("malformed WKB")
    return _check(geom, "the AOI")


def _from_text(text: str) -> BaseGeometry:
    stripped = text.strip()
    if stripped and len(stripped) % 2 == 0 and set(stripped) <= _HEX:
        return _from_wkb(bytes.fromhex(stripped))
    try:
        geom = shapely.from_wkt(stripped, on_invalid="raise")
    except (GEOSException, ValueError, TypeError) as exc:
        raise GeometryError(f"malformed WKT: {exc}") from exc
    if geom is None:
        raise GeometryError("malformed WKT")
    return _check(geom, "the AOI")


def _from_geojson(obj: Any) -> BaseGeometry:
    data = getattr(obj, "__geo_interface__", obj)
    if isinstance(data, Mapping) and data.get("type") == "Feature":
        data = data.get("geometry")
        if data is None:
            raise GeometryError("the GeoJSON Feature has no geometry")
    try:
        geom = shapely.geometry.shape(data)
    except (GEOSException, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise GeometryError(f"malformed GeoJSON geometry: {exc}") from exc
    return _check(geom, "the AOI")


def _from_box(minx: float, miny: float, maxx: float, maxy: float) -> BaseGeometry:
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise GeometryError(f"box ({minx}, {miny}, {maxx}, {maxy}) has non-finite bounds")
    if minx > maxx or miny > maxy:
        raise GeometryError(f"box ({minx}, {miny}, {maxx}, {maxy}) is not (minx, miny, maxx, maxy)")
    return shapely.box(minx, miny, maxx, maxy)


def _check(geom: BaseGeometry, what: str) -> BaseGeometry:
    """Reject empty geometries and non-finite coordinates."""
    if geom.is_empty:
        raise GeometryError(f"{what} is an empty geometry")
    if not np.isfinite(shapely.get_coordinates(geom)).all():
        raise GeometryError(f"{what} has non-finite coordinates")
    return geom


# --------------------------------------------------------------------------------------------------
# CRS handling


def crs_key(crs: CrsLike) -> str:
    """A hashable text form of a CRS given as an EPSG number, any pyproj-readable string, or a CRS."""
    if isinstance(crs, pyproj.CRS):
        return crs.to_wkt()
    if isinstance(crs, bool):
        raise GeometryError(f"not a CRS: {crs!r}")
    if isinstance(crs, int | np.integer):
        return f"EPSG:{int(crs)}"
    if isinstance(crs, str) and crs.strip():
        return crs.strip()
    raise GeometryError(f"not a CRS: {crs!r}")


@lru_cache(maxsize=256)
def _crs(key: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(key)
    except pyproj.exceptions.CRSError as exc:
        raise GeometryError(f"unknown CRS {key!r}: {exc}") from exc


@lru_cache(maxsize=256)
def _transformer(src: str, dst: str) -> pyproj.Transformer | None:
    """One Transformer per CRS pair (x/y in lon/lat order); None when the CRSs are the same."""
    a, b = _wgs84_utm(src), _wgs84_utm(dst)
    if a is not None and b is not None:
        return None if a == b else pyproj.Transformer.from_pipeline(_utm_pipeline(a, b))
    return _crs_transformer(src, dst)


@lru_cache(maxsize=64)
def _crs_transformer(src: str, dst: str) -> pyproj.Transformer | None:
    """The Transformer PROJ builds from both CRSs (it knows them: transform_bounds needs that)."""
    a, b = _crs(src), _crs(dst)
    if a == b:
        return None
    return pyproj.Transformer.from_crs(a, b, always_xy=True)


_EPSG_KEY = re.compile(r"(?i)epsg:(\d+)")


def _wgs84_utm(key: str) -> str | None:
    """PROJ's parameters of EPSG:326zz/327zz (WGS 84 / UTM), "" for EPSG:4326; None for other CRSs."""
    m = _EPSG_KEY.fullmatch(key)
    if m is None:
        return None
    code = int(m.group(1))
    if code == 4326:
        return ""
    if code // 100 in (326, 327) and 1 <= code % 100 <= 60:
        return f"+proj=utm +zone={code % 100}{' +south' if code // 100 == 327 else ''} +ellps=WGS84"
    return None


def _utm_pipeline(src: str, dst: str) -> str:
    """The pipeline PROJ itself picks between EPSG:4326 ("") and WGS 84 / UTM zones (lon/lat order).

    Both sides are WGS 84, so it is a pure projection, and stating it skips PROJ's database: a process's
    first CRS costs ~3-4 ms there, at the start of every cold read."""
    steps = ["+proj=pipeline"]
    steps.append(f"+step +inv {src}" if src else "+step +proj=unitconvert +xy_in=deg +xy_out=rad")
    steps.append(f"+step {dst}" if dst else "+step +proj=unitconvert +xy_in=rad +xy_out=deg")
    return " ".join(steps)


def get_transformer(src_crs: CrsLike, dst_crs: CrsLike) -> pyproj.Transformer | None:
    """The cached always_xy Transformer from `src_crs` to `dst_crs`, or None if they are equal."""
    return _transformer(crs_key(src_crs), crs_key(dst_crs))


def transform_geometry(geom: BaseGeometry, src_crs: CrsLike, dst_crs: CrsLike) -> BaseGeometry:
    """`geom` with every vertex moved from `src_crs` to `dst_crs` (x/y = lon/lat order for degrees).

    Vertices PROJ cannot transform (inf results) raise GeometryError naming the CRS pair.
    """
    tr = get_transformer(src_crs, dst_crs)
    if tr is None:
        return geom

    def move(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tr.transform(x, y)

    out = shapely.transform(geom, move, interleaved=False)
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise GeometryError(
            f"the AOI cannot be moved from {_short(src_crs)} to {_short(dst_crs)}: some vertices fall "
            "outside what the projection can represent"
            + _area_hint(geom, src_crs, dst_crs)
        )
    return out


def transform_geometries(geoms: Sequence[BaseGeometry], src_crs: CrsLike, dst_crs: CrsLike
                         ) -> list[BaseGeometry | GeometryError]:
    """`transform_geometry` of many geometries with one PROJ call (a chunk of a join moves thousands of
    AOIs); an AOI PROJ cannot move gets its GeometryError in its slot instead."""
    tr = get_transformer(src_crs, dst_crs)
    if tr is None or not geoms:
        return list(geoms)
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = list(geoms)

    def move(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tr.transform(x, y)

    moved = shapely.transform(arr, move, interleaved=False)
    coords, owner = shapely.get_coordinates(moved, return_index=True)
    # a set, not np.unique: np.unique imports numpy.ma on first use (10-20 ms inside the first query)
    bad = set(owner[~np.isfinite(coords).all(axis=1)].tolist())
    out: list[BaseGeometry | GeometryError] = []
    for i, g in enumerate(moved):
        if i in bad:  # one by one for the exact message
            try:
                out.append(transform_geometry(geoms[i], src_crs, dst_crs))
            except GeometryError as exc:
                out.append(exc)
        else:
            out.append(g)
    return out


def check_area_of_use(geom: BaseGeometry, crs: CrsLike, target_crs: CrsLike | None = None) -> str | None:
    """A message when `geom` (in `crs`) lies outside where `crs` / `target_crs` are defined, else None.

    Catches the classic (lat, lon) swap: latitudes beyond +-90 in a geographic CRS, or an AOI
    nowhere near the area of use of the raster's CRS.
    """
    src = _crs(crs_key(crs))
    minx, miny, maxx, maxy = geom.bounds
    if src.is_geographic:
        if miny < -90.0 or maxy > 90.0:
            return (
                f"the AOI's y values ({miny:g} to {maxy:g}) are not latitudes in {_short(crs)}: "
                "coordinates must be (x=lon, y=lat); were latitude and longitude swapped?"
            )
        if minx < -360.0 or maxx > 360.0:
            return f"the AOI's x values ({minx:g} to {maxx:g}) are not longitudes in {_short(crs)}"
    try:
        lon_lat = _lonlat_bounds((minx, miny, maxx, maxy), crs)
    except GeometryError as exc:
        return str(exc)
    for which in (crs, target_crs):
        if which is None:
            continue
        area = _crs(crs_key(which)).area_of_use
        if area is None:
            continue
        if not _overlaps(lon_lat, (area.west, area.south, area.east, area.north)):
            return (
                f"the AOI (lon {lon_lat[0]:.4g} to {lon_lat[2]:.4g}, lat {lon_lat[1]:.4g} to "
                f"{lon_lat[3]:.4g}) is outside the area of use of {_short(which)} ({area.name}); "
                "check the AOI's CRS and the (x=lon, y=lat) axis order"
            )
    return None


def _lonlat_bounds(bounds: tuple[float, float, float, float], crs: CrsLike) -> tuple[float, float, float, float]:
    tr = _crs_transformer(crs_key(crs), "EPSG:4326")  # knows the target is lon/lat (the antimeridian)
    if tr is None:
        return bounds
    try:
        out = tr.transform_bounds(*bounds, densify_pts=21)
    except pyproj.exceptions.ProjError as exc:
        raise GeometryError(f"the AOI cannot be expressed in lon/lat from {_short(crs)}: {exc}") from exc
    if not all(math.isfinite(v) for v in out):
        raise GeometryError(f"the AOI cannot be expressed in lon/lat from {_short(crs)}")
    return (out[0], out[1], out[2], out[3])


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Lon/lat boxes overlap (with a small margin); boxes crossing the antimeridian count as wide."""
    margin = 1e-6
    if b[0] > b[2] or a[0] > a[2]:
        lon_ok = True
    else:
        lon_ok = a[0] <= b[2] + margin and b[0] <= a[2] + margin
    return lon_ok and a[1] <= b[3] + margin and b[1] <= a[3] + margin


def _area_hint(geom: BaseGeometry, src_crs: CrsLike, dst_crs: CrsLike) -> str:
    try:
        msg = check_area_of_use(geom, src_crs, dst_crs)
    except GeometryError:
        return ""
    return f" ({msg})" if msg else ""


def _short(crs: CrsLike) -> str:
    key = crs_key(crs)
    if len(key) <= 40:
        return key
    try:
        auth = _crs(key).to_authority()
    except GeometryError:
        auth = None
    return f"{auth[0]}:{auth[1]}" if auth else key[:40] + "..."
