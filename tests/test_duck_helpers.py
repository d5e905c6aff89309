"""Shared by the DuckDB-surface tests: test rasters, AOIs and the rasterio oracle (no tests here).

The oracle is `rasterio.mask.mask(crop=True)`: the AOI is moved from EPSG:4326 into the raster CRS with
pyproj directly, the filled read gives the pixels (outside-AOI = nodata, else 0) and the masked read
gives the valid mask (inside the AOI and not nodata), exactly the semantics of `load_bands`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import shapely
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from ._paths import corpus_dir


@dataclass
class Raster:
    """One test file: where it is on disk and on the server, and its facts as rasterio reports them."""

    key: str  # short name, also the record id stem
    path: Path
    dtype: str
    duck_type: str


CORPUS = {
    "u16": ("rio-tiler/cog.tif", "uint16", "USMALLINT"),
    "f32": ("rio-tiler/inverted_lat.tif", "float32", "FLOAT"),
    "rgb": ("rasterio/rgb_lzw.tif", "uint8", "UTINYINT"),
}


def write_utm_tif(path: Path, data: np.ndarray, *, nodata: float | None, tile: int = 16) -> Path:
    """A tiled, deflated single-band GeoTIFF of `data` (its dtype kept) written by GDAL on a 30 m UTM 33N
    grid whose top-left corner is 500,000 E / 5,000,000 N."""
    import rasterio
    from rasterio.transform import from_origin

    height, width = data.shape
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": data.dtype.name,
        "crs": "EPSG:32633", "transform": from_origin(500_000.0, 5_000_000.0, 30.0, 30.0), "nodata": nodata,
        "tiled": True, "blockxsize": tile, "blockysize": tile, "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def write_int8_tif(path: Path, *, width: int = 70, height: int = 50, tile: int = 16) -> Path:
    """A tiled, deflated, georeferenced int8 GeoTIFF (UTM 33N) with a nodata value and some nodata pixels."""
    rng = np.random.default_rng(8)
    data = rng.integers(-127, 128, size=(height, width), dtype=np.int16).astype(np.int8)
    data[5:9, 10:30] = -128  # nodata stripe
    return write_utm_tif(path, data, nodata=-128, tile=tile)


def raster_bounds(path: Path) -> tuple[tuple[float, float, float, float], str]:
    """(left, bottom, right, top) in the raster CRS (sorted), and that CRS."""
    import rasterio

    with rasterio.open(path) as src:
        b = src.bounds
        return (min(b.left, b.right), min(b.bottom, b.top), max(b.left, b.right), max(b.bottom, b.top)), str(src.crs)


def to_4326(geom: BaseGeometry, crs: str) -> BaseGeometry:
    """Move a geometry from `crs` to lon/lat."""
    tr = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(geom, lambda x, y: tr.transform(x, y), interleaved=False)


def from_4326(geom: BaseGeometry, crs: str) -> BaseGeometry:
    """Move a lon/lat geometry into `crs`."""
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(geom, lambda x, y: tr.transform(x, y), interleaved=False)


def aois_for(path: Path) -> list[BaseGeometry]:
    """Four AOIs in lon/lat: an inner box, a triangle over the edge, a polygon with a hole, a far miss."""
    (x0, y0, x1, y1), crs = raster_bounds(path)
    w, h = x1 - x0, y1 - y0

    def at(fx: float, fy: float) -> tuple[float, float]:
        return (x0 + fx * w, y0 + fy * h)

    box = shapely.Polygon([at(0.31, 0.42), at(0.36, 0.42), at(0.36, 0.47), at(0.31, 0.47)])
    tri = shapely.Polygon([at(0.93, 0.10), at(1.08, 0.14), at(0.95, 0.21)])
    outer = [at(0.52, 0.60), at(0.61, 0.60), at(0.61, 0.69), at(0.52, 0.69)]
    hole = [at(0.55, 0.63), at(0.58, 0.63), at(0.58, 0.66), at(0.55, 0.66)]
    holed = shapely.Polygon(outer, [hole])
    geoms = [to_4326(g, crs) for g in (box, tri, holed)]
    if x1 - x0 >= 359.0 and "4326" in crs:
        return geoms  # a global raster: no AOI can miss it
    c = geoms[0].centroid
    lon = c.x - 90.0 if c.x > -90.0 else c.x + 90.0
    return [*geoms, shapely.box(lon, -10.0, lon + 0.5, -9.5)]


def rasterio_pixels(path: Path, geom4326: BaseGeometry, bands: list[int] | None = None) -> dict[str, Any] | None:
    """What rasterio reads for an AOI: data (bands, h, w), valid (h, w), transform; None when it misses."""
    import rasterio
    import rasterio.mask

    with rasterio.open(path) as src:
        g = mapping(from_4326(geom4326, str(src.crs)))
        idx = bands or list(range(1, src.count + 1))
        try:
            filled, tr = rasterio.mask.mask(src, [g], crop=True, filled=True, indexes=idx)
            masked, _ = rasterio.mask.mask(src, [g], crop=True, filled=False, indexes=idx)
        except ValueError:  # "Input shapes do not overlap raster."
            return None
        valid = ~np.ma.getmaskarray(masked).any(axis=0)
        return {"data": filled, "valid": valid, "transform": tuple(tr)[:6], "crs": src.crs.to_string(),
                "nodata": src.nodata}


def assert_result_matches(result: dict[str, Any] | None, expected: dict[str, Any] | None, dtype: str) -> None:
    """A load_bands value (Python dict) equals the rasterio oracle: pixels, valid mask, grid, dtype."""
    if expected is None:
        assert result is None
        return
    assert result is not None
    h, w = expected["data"].shape[1:]
    assert (result["height"], result["width"]) == (h, w)
    assert result["dtype"] == dtype
    data = np.array([np.asarray(b) for b in result["data"]]).reshape(expected["data"].shape)
    np.testing.assert_array_equal(data.astype(dtype), expected["data"])
    np.testing.assert_array_equal(np.asarray(result["valid"], dtype=bool).reshape(h, w), expected["valid"])
    np.testing.assert_allclose(result["transform"], expected["transform"], rtol=0, atol=1e-6)
    assert result["crs"] == expected["crs"]
    fill = expected["nodata"] if expected["nodata"] is not None else 0
    assert result["nodata"] == fill or (np.isnan(fill) and np.isnan(result["nodata"]))


def sql_aoi_values(aois: list[BaseGeometry]) -> str:
    """A VALUES list (id, geom GEOMETRY) for the AOIs, usable inside a query."""
    rows = ", ".join(f"({i}, '{g.wkt}'::GEOMETRY)" for i, g in enumerate(aois))
    return f"(VALUES {rows}) AS aoi(id, geom)"


def corpus_path(rel: str) -> Path:
    """A file of the shared corpus."""
    return corpus_dir() / rel


def assert_cog_rows_match(rows: dict[int, dict[str, Any]], aois: list[BaseGeometry]) -> None:
    """JSON rows of the README join over rio-tiler/cog.tif (keyed by AOI index, `px` and its `typeof` in `t`)
    equal rasterio's pixels; AOIs that miss the raster have no row."""
    for i, g in enumerate(aois):
        expected = rasterio_pixels(corpus_path("rio-tiler/cog.tif"), g)
        if expected is None:
            assert i not in rows
            continue
        assert '"data" USMALLINT[][]' in rows[i]["t"]
        assert_result_matches(rows[i]["px"], expected, "uint16")

