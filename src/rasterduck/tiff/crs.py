"""CRS from GeoKeys: an EPSG code where the keys name one, else a WKT built from what they define.

Order, as GDAL reads them: an ESRI PE string in a citation; ProjectedCSTypeGeoKey before
GeographicTypeGeoKey; user-defined (32767) keys resolved by their citation name in the EPSG database
when that CRS matches the keys, else a PROJ definition assembled from the projection keys. 32767 is
never returned as a code.
"""

from __future__ import annotations

import re
from functools import lru_cache

from pyproj import CRS
from pyproj.exceptions import CRSError

USER_DEFINED = 32767
# key ids
MODEL_TYPE, GT_CITATION = 1024, 1026
GEOG_TYPE, GEOG_CITATION, GEOG_ELLIPSOID = 2048, 2049, 2056
GEOG_SEMI_MAJOR, GEOG_SEMI_MINOR, GEOG_INV_FLATTENING = 2057, 2058, 2059
PROJECTED_TYPE, PCS_CITATION, PROJ_COORD_TRANS = 3072, 3073, 3075
PROJ_LINEAR_UNITS, PROJ_LINEAR_UNIT_SIZE = 3076, 3077
VERTICAL_TYPE = 4096

_UNITS_TO_METRE = {9001: 1.0, 9002: 0.3048, 9003: 1200.0 / 3937.0, 9030: 1852.0, 9036: 1000.0}

# GeoTIFF CT_* codes (and the EPSG method codes some writers put there) -> PROJ projection template.
# Values in braces name GeoKeys: 3078 StdParallel1, 3079 StdParallel2, 3080 NatOriginLong,
# 3081 NatOriginLat, 3082 FalseEasting, 3083 FalseNorthing, 3084 FalseOriginLong, 3085 FalseOriginLat,
# 3086 FalseOriginEasting, 3087 FalseOriginNorthing, 3088 CenterLong, 3089 CenterLat,
# 3090 CenterEasting, 3091 CenterNorthing, 3092 ScaleAtNatOrigin, 3093 ScaleAtCenter,
# 3094 AzimuthAngle, 3095 StraightVertPoleLong, 3096 RectifiedGridAngle.
_METHODS: dict[int, str] = {
    1: "+proj=tmerc +lat_0={3081} +lon_0={3080} +k={3092}",
    27: "+proj=tmerc +axis=wsu +lat_0={3081} +lon_0={3080} +k={3092}",
    7: "+proj=merc +lon_0={3080} +k={3092}",
    8: "+proj=lcc +lat_1={3078} +lat_2={3079} +lat_0={3085|3081} +lon_0={3084|3080}",
    9: "+proj=lcc +lat_1={3081} +lat_0={3081} +lon_0={3080} +k_0={3092}",
    10: "+proj=laea +lat_0={3089|3081} +lon_0={3088|3080}",
    11: "+proj=aea +lat_1={3078} +lat_2={3079} +lat_0={3085|3081} +lon_0={3084|3080}",
    12: "+proj=aeqd +lat_0={3089|3081} +lon_0={3088|3080}",
    14: "+proj=stere +lat_0={3089|3081} +lon_0={3088|3080} +k={3092}",
    15: "+proj=stere +lat_0={3081} +lat_ts={3081} +lon_0={3095|3080} +k={3092}",
    16: "+proj=sterea +lat_0={3081} +lon_0={3080} +k={3092}",
    17: "+proj=eqc +lat_ts={3078} +lat_0={3081} +lon_0={3088|3080}",
    3: "+proj=omerc +lat_0={3089} +lonc={3088} +alpha={3094} +gamma={3096} +k={3093|3092}",
    9815: "+proj=omerc +lat_0={3089} +lonc={3088} +alpha={3094} +gamma={3096} +k={3093|3092}",
    9812: "+proj=omerc +no_uoff +lat_0={3089} +lonc={3088} +alpha={3094} +gamma={3096} +k={3093|3092}",
}
_DEFAULTS = {3092: 1.0, 3093: 1.0, 3096: 0.0}
_PE = re.compile(r"ESRI PE String = (.*)$", re.S)


def crs_from_geokeys(keys: dict[int, object]) -> tuple[int | None, str | None]:
    """(EPSG code, None) when the keys name an EPSG CRS, else (None, WKT) or (None, None)."""
    for key in (PCS_CITATION, GT_CITATION):
        text = keys.get(key)
        if isinstance(text, str) and (m := _PE.search(text)):
            return None, _wkt(m.group(1).strip())
    pcs = keys.get(PROJECTED_TYPE)
    gcs = keys.get(GEOG_TYPE)
    if isinstance(pcs, int) and 0 < pcs < USER_DEFINED:
        units = keys.get(PROJ_LINEAR_UNITS)
        if isinstance(units, int) and units != USER_DEFINED and not _has_units(pcs, units):
            return None, _with_linear_units(pcs, units)
        return pcs, None
    if pcs == USER_DEFINED or (pcs is None and keys.get(PROJ_COORD_TRANS) is not None):
        return _user_defined_projected(keys)
    if isinstance(gcs, int) and 0 < gcs < USER_DEFINED:
        return gcs, None
    if gcs == USER_DEFINED:
        wkt = _geographic(keys)
        return None, wkt
    return None, None


def _wkt(text: str) -> str | None:
    try:
        return CRS.from_user_input(text).to_wkt()
    except CRSError:
        return None


@lru_cache(maxsize=256)
def _has_units(epsg: int, units: int) -> bool:
    try:
        crs = CRS.from_epsg(epsg)
    except CRSError:
        return True
    want = _UNITS_TO_METRE.get(units)
    if want is None:
        return True
    return all(abs(ax.unit_conversion_factor - want) < 1e-12 for ax in crs.axis_info)


def _with_linear_units(epsg: int, units: int) -> str | None:
    """The EPSG CRS with its axes in other linear units (GDAL keeps a unit override as a custom CRS)."""
    factor = _UNITS_TO_METRE[units]
    name = {9002: "foot", 9003: "US survey foot"}.get(units, "unknown")
    try:
        doc = CRS.from_epsg(epsg).to_json_dict()
        for axis in doc.get("coordinate_system", {}).get("axis", []):
            axis["unit"] = {"type": "LinearUnit", "name": name, "conversion_factor": factor}
        doc.pop("id", None)
        return CRS.from_json_dict(doc).to_wkt()
    except (CRSError, KeyError, TypeError):
        return None


def _ellipsoid(keys: dict[int, object]) -> str:
    gcs = keys.get(GEOG_TYPE)
    if isinstance(gcs, int) and 0 < gcs < USER_DEFINED:
        try:
            e = CRS.from_epsg(gcs).ellipsoid
            if e is not None:
                return f"+a={e.semi_major_metre!r} +rf={e.inverse_flattening!r}" if e.inverse_flattening else f"+R={e.semi_major_metre!r}"
        except CRSError:
            pass
    a = keys.get(GEOG_SEMI_MAJOR)
    if isinstance(a, float | int):
        rf = keys.get(GEOG_INV_FLATTENING)
        b = keys.get(GEOG_SEMI_MINOR)
        if isinstance(rf, float | int) and rf:
            return f"+a={float(a)!r} +rf={float(rf)!r}"
        if isinstance(b, float | int) and b:
            return f"+a={float(a)!r} +b={float(b)!r}"
        return f"+R={float(a)!r}"
    return "+ellps=WGS84"


def _geographic(keys: dict[int, object]) -> str | None:
    try:
        return CRS.from_proj4(f"+proj=longlat {_ellipsoid(keys)} +no_defs").to_wkt()
    except CRSError:
        return None


def _value(keys: dict[int, object], spec: str) -> float | None:
    for part in spec.split("|"):
        v = keys.get(int(part))
        if isinstance(v, float | int):
            return float(v)
    return _DEFAULTS.get(int(spec.split("|")[0]))


def _user_defined_projected(keys: dict[int, object]) -> tuple[int | None, str | None]:
    built = _build_projected(keys)
    for key in (PCS_CITATION, GT_CITATION):
        name = keys.get(key)
        if not isinstance(name, str) or not name or name.lower() == "unnamed" or "\n" in name:
            continue
        try:
            named = CRS.from_user_input(name)
        except CRSError:
            continue
        code = named.to_epsg()
        if code and named.is_projected and (built is None or _same_projection(named, built)):
            return code, None
    return None, built.to_wkt() if built is not None else None


def _build_projected(keys: dict[int, object]) -> CRS | None:
    method = keys.get(PROJ_COORD_TRANS)
    if not isinstance(method, int) or method not in _METHODS:
        return None
    template = _METHODS[method]
    parts: list[str] = []
    for token in template.split():
        if "{" in token:
            name, spec = token.split("={")
            v = _value(keys, spec.rstrip("}"))
            if v is None:
                continue
            parts.append(f"{name}={v!r}")
        else:
            parts.append(token)
    units = keys.get(PROJ_LINEAR_UNITS)
    size = keys.get(PROJ_LINEAR_UNIT_SIZE)
    to_m = _UNITS_TO_METRE.get(units, 1.0) if isinstance(units, int) else 1.0
    if units == USER_DEFINED and isinstance(size, float | int):
        to_m = float(size)
    fe = _value(keys, "3082|3086|3090") or 0.0
    fn = _value(keys, "3083|3087|3091") or 0.0
    parts.append(f"+x_0={fe * to_m!r} +y_0={fn * to_m!r}")
    parts.append(_ellipsoid(keys))
    parts.append(f"+to_meter={to_m!r} +no_defs" if to_m != 1.0 else "+units=m +no_defs")
    try:
        return CRS.from_proj4(" ".join(parts))
    except CRSError:
        return None


def _same_projection(a: CRS, b: CRS) -> bool:
    """True when two projected CRSs map a point of `a`'s area of use to within a metre."""
    from pyproj import Transformer

    aou = a.area_of_use
    lon, lat = ((aou.west + aou.east) / 2, (aou.south + aou.north) / 2) if aou else (0.0, 0.0)
    try:
        pa = Transformer.from_crs(a.geodetic_crs, a, always_xy=True).transform(lon, lat)
        pb = Transformer.from_crs(a.geodetic_crs, b, always_xy=True).transform(lon, lat)
    except Exception:
        return False
    ua = a.axis_info[0].unit_conversion_factor
    ub = b.axis_info[0].unit_conversion_factor
    return abs(pa[0] * ua - pb[0] * ub) < 1.0 and abs(pa[1] * ua - pb[1] * ub) < 1.0
