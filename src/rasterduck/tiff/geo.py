"""GeoTIFF georeferencing from decoded tags: affine transform, CRS, nodata, GDAL metadata.

Follows GDAL's reading of the tags: ModelTransformation wins over PixelScale+Tiepoint, PixelIsPoint
moves the origin half a pixel up-left, several tiepoints without a scale are GCPs (no transform).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from . import tags as T
from .crs import crs_from_geokeys
from .ifd import as_floats, as_ints
from .model import GeoReference

# GeoKey ids used here
GT_RASTER_TYPE = 1025


def parse_geokeys(tags: dict[int, object]) -> dict[int, object]:
    """Decode the GeoKeyDirectory into {key id: int | float | tuple | str}."""
    if T.GEO_KEY_DIRECTORY not in tags:
        return {}
    d = as_ints(tags[T.GEO_KEY_DIRECTORY])
    doubles = as_floats(tags[T.GEO_DOUBLE_PARAMS]) if T.GEO_DOUBLE_PARAMS in tags else ()
    ascii_ = tags.get(T.GEO_ASCII_PARAMS)
    text = ascii_ if isinstance(ascii_, str) else ""
    keys: dict[int, object] = {}
    if len(d) < 4:
        return keys
    n = min(d[3], (len(d) - 4) // 4)
    for i in range(n):
        key, loc, count, value = d[4 + 4 * i : 8 + 4 * i]
        if loc == 0:
            keys[key] = value
        elif loc == T.GEO_DOUBLE_PARAMS:
            vals = doubles[value : value + count]
            if vals:
                keys[key] = vals[0] if count == 1 else tuple(vals)
        elif loc == T.GEO_ASCII_PARAMS:
            keys[key] = text[value : value + count].rstrip("|\x00")
        elif loc == T.GEO_KEY_DIRECTORY:
            vals_i = d[value : value + count]
            keys[key] = vals_i[0] if count == 1 and vals_i else tuple(vals_i)
    return keys


def parse_nodata(text: str) -> float | None:
    """GDAL_NODATA is ASCII: a number, 'nan', 'inf'; anything unparsable means no nodata."""
    t = text.strip().strip("\x00").strip()
    if not t:
        return None
    try:
        return float(t)
    except ValueError:
        return None


def parse_gdal_metadata(text: str, bands: int) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None,
                                                        tuple[str | None, ...] | None, float | None]:
    """Per-band scale, offset, description and a NODATA item from GDAL's XML metadata tag."""
    try:
        root = ET.fromstring(text.strip().strip("\x00"))
    except ET.ParseError:
        return None, None, None, None
    scales = [1.0] * bands
    offsets = [0.0] * bands
    descr: list[str | None] = [None] * bands
    have_scale = have_descr = False
    nodata = None
    for item in root.iter("Item"):
        name = (item.get("name") or "").upper()
        role = (item.get("role") or "").lower()
        sample = item.get("sample")
        value = (item.text or "").strip()
        if name in ("NODATA_VALUES", "NODATA_VALUE") and nodata is None and value:
            nodata = parse_nodata(value.split()[0])
        if sample is None or not sample.isdigit() or int(sample) >= bands:
            continue
        i = int(sample)
        try:
            if role == "scale":
                scales[i] = float(value)
                have_scale = True
            elif role == "offset":
                offsets[i] = float(value)
                have_scale = True
        except ValueError:
            continue
        if role == "description":
            descr[i] = value
            have_descr = True
    return (
        tuple(scales) if have_scale else None,
        tuple(offsets) if have_scale else None,
        tuple(descr) if have_descr else None,
        nodata,
    )


def georeference(tags: dict[int, object], bands: int) -> GeoReference:
    """All georeferencing facts of the full-resolution image's tags."""
    keys = parse_geokeys(tags)
    rt = keys.get(GT_RASTER_TYPE, 1)
    raster_type = rt if isinstance(rt, int) else 1
    scale = as_floats(tags[T.MODEL_PIXEL_SCALE]) if T.MODEL_PIXEL_SCALE in tags else None
    tie = as_floats(tags[T.MODEL_TIEPOINT]) if T.MODEL_TIEPOINT in tags else None
    mt = as_floats(tags[T.MODEL_TRANSFORMATION]) if T.MODEL_TRANSFORMATION in tags else None
    transform: tuple[float, float, float, float, float, float] | None = None
    problem = None
    gcps = 0
    if mt is not None and len(mt) >= 16:
        a, b, _, c, d, e, _, f = mt[:8]
        transform = (a, b, c, d, e, f)
    elif scale is not None and tie is not None and len(scale) >= 2 and len(tie) >= 6:
        i, j, _, x, y, _ = tie[:6]
        sx, sy = scale[0], scale[1]
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    elif tie is not None and len(tie) >= 6:
        gcps = len(tie) // 6
        problem = f"georeferenced by {gcps} ground control points, not an affine transform"
    else:
        problem = "no georeferencing tags (ModelTransformation or PixelScale+Tiepoint)"
    if transform is not None:
        if not all(math.isfinite(v) for v in transform) or transform[0] * transform[4] - transform[1] * transform[3] == 0:
            problem = f"degenerate transform {transform}"
            transform = None
        elif raster_type == 2:
            a, b, c, d, e, f = transform
            transform = (a, b, c - 0.5 * a - 0.5 * b, d, e, f - 0.5 * d - 0.5 * e)
    epsg, wkt = crs_from_geokeys(keys) if keys else (None, None)
    nodata_tag = tags.get(T.GDAL_NODATA)
    nodata = parse_nodata(nodata_tag) if isinstance(nodata_tag, str) else None
    scales = offsets = descr = None
    md = tags.get(T.GDAL_METADATA)
    if isinstance(md, str):
        scales, offsets, descr, md_nodata = parse_gdal_metadata(md, bands)
        if nodata is None and nodata_tag is None:
            nodata = md_nodata
    return GeoReference(
        transform=transform,
        epsg=epsg,
        crs_wkt=wkt,
        raster_type=raster_type,
        pixel_scale=scale,
        tiepoint=tie,
        model_transformation=mt,
        geokeys=keys,
        nodata=nodata,
        scales=scales,
        offsets=offsets,
        descriptions=descr,
        gcp_count=gcps,
        problem=problem,
    )


