"""Warping read results onto one shared grid, against `rasterio.warp.reproject` (GDAL's warper).

Each case reads AOIs through the kernel (HTTP server), warps them with rasterduck, and asks GDAL to warp
the same source array onto the same destination grid (a WarpedVRT, nearest, `tolerance=1e-9`: GDAL's exact transformer
rather than its interpolating approximation, nodata = the fill value). `rasterio.warp.reproject` runs
gdalwarp with its default 0.125-pixel approximation, which moves source positions by up to ~0.01 pixel
here: it picks a neighbouring pixel for a fraction of a percent of the destination pixels; the test reports
that agreement too.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.vrt import WarpedVRT

import rasterduck
from rasterduck import ReadResult
from rasterduck.core.read import ReadRequest, band_sources, read_batch
from rasterduck.core.warp import source_resolution, target_grid, warp_results
from rasterduck.io.backend import DefaultBackend
from rasterduck.io.loop import run_sync

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

# one area near 15 E / 46 N, written in two UTM zones (33: native, 32: 10 m pixels too)
AREA = (15.05, 46.02, 15.25, 46.12)


def write(path: Path, crs: str, res: float, dtype: str = "uint16", nodata: float | None = 0) -> Path:
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x0, y0, x1, y1 = tr.transform_bounds(*AREA)
    x0, y1 = math.floor(x0 / res) * res, math.ceil(y1 / res) * res
    w, h = int((x1 - x0) / res) + 1, int((y1 - y0) / res) + 1
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    yy, xx = np.mgrid[0:h, 0:w]
    if dtype.startswith("float"):
        data = (np.sin(xx / 17.0) * np.cos(yy / 11.0) * 100 + rng.normal(0, 1, (h, w))).astype(dtype)
        data[5:9, 5:40] = np.nan if nodata is not None and np.isnan(nodata) else data[5:9, 5:40]
    else:
        data = rng.integers(1, 5000, (h, w)).astype(dtype)
        data[20:30, :] = nodata if nodata is not None else 0
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype=dtype, crs=crs,
                       transform=from_origin(x0, y1, res, res), tiled=True, blockxsize=256, blockysize=256,
                       compress="DEFLATE", nodata=nodata) as dst:
        dst.write(data[None])
    return path


@pytest.fixture
def backend() -> Iterator[DefaultBackend]:
    be = DefaultBackend()
    yield be
    run_sync(be.close())


def aois() -> list[shapely.Geometry]:
    rng = np.random.default_rng(5)
    out = []
    for _ in range(4):
        cx, cy = rng.uniform(AREA[0] + 0.03, AREA[2] - 0.03), rng.uniform(AREA[1] + 0.02, AREA[3] - 0.02)
        ang = np.sort(rng.uniform(0, 2 * np.pi, 8))
        out.append(shapely.Polygon(np.column_stack([cx + 0.02 * np.cos(ang), cy + 0.012 * np.sin(ang)])))
    return out


def read_all(paths: list[Path], make_server: Callable[..., Any], backend: DefaultBackend,
             geoms: list[shapely.Geometry]) -> list[ReadResult]:
    srv = make_server(root=paths[0].parent)
    coll = rasterduck.build_collection([srv.url(p.name) for p in paths])
    reqs = [ReadRequest(acc.id, g, "EPSG:4326", band_sources(acc, ["b1"]), geometry_index=i)
            for acc in coll.iterate_rasters() for i, g in enumerate(geoms)]
    results = run_sync(read_batch(reqs, backend))
    assert all(isinstance(r, ReadResult) for r in results)
    return [r for r in results if isinstance(r, ReadResult)]


def gdal_warp(src: ReadResult, dst: ReadResult, resampling: Resampling = Resampling.nearest, *,
              data: np.ndarray | None = None, nodata: Any = "result", tolerance: float = 1e-9) -> np.ndarray:
    """GDAL's warper (a WarpedVRT) applied to the source pixels, onto the destination's grid.

    `tolerance` is GDAL's approximation error in pixels: 1e-9 makes it transform every pixel exactly
    (0 is refused by the VRT, and `reproject` always uses gdalwarp's default 0.125).
    """
    arr = src.data if data is None else data
    nd = src.nodata if nodata == "result" else nodata
    profile = dict(driver="GTiff", width=src.width, height=src.height, count=arr.shape[0], dtype=arr.dtype,
                   crs=src.crs, transform=Affine(*src.transform), nodata=nd)
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(arr)
        with mem.open() as ds, WarpedVRT(ds, crs=dst.crs, transform=Affine(*dst.transform), width=dst.width,
                                         height=dst.height, resampling=resampling, tolerance=tolerance,
                                         nodata=nd) as vrt:
            return vrt.read()


@pytest.mark.parametrize("target", ["EPSG:4326", "EPSG:3857", "EPSG:32632"])
def test_nearest_equals_gdal_warp(tmp_path: Path, make_server: Callable[..., Any], backend: DefaultBackend,
                                  target: str) -> None:
    """Every destination pixel equals GDAL's nearest-neighbour warp of the same source on the same grid."""
    results = read_all([write(tmp_path / "a.tif", "EPSG:32633", 10.0)], make_server, backend, aois())
    warped = warp_results(results, target)
    total = equal = approx = 0
    for src, dst in zip(results, warped, strict=True):
        assert isinstance(dst, ReadResult) and dst.dtype == "uint16" and dst.crs == target
        ref = gdal_warp(src, dst)
        equal += int((ref == dst.data).sum())
        approx += int((gdal_warp(src, dst, tolerance=0.125) == dst.data).sum())
        total += ref.size
        assert (dst.data[:, ~dst.valid] == dst.nodata).all()
        assert (dst.data[:, dst.valid] != dst.nodata).all()
    print(f"{target}: {equal}/{total} pixels equal GDAL's exact warp, {approx}/{total} its default "
          "(0.125 px approximate transformer)")
    assert equal == total


def test_valid_mask_is_the_warped_source_validity(tmp_path: Path, make_server: Callable[..., Any],
                                                  backend: DefaultBackend) -> None:
    results = read_all([write(tmp_path / "m.tif", "EPSG:32633", 10.0)], make_server, backend, aois())
    for src, dst in zip(results, warp_results(results, "EPSG:3857"), strict=True):
        assert isinstance(dst, ReadResult)
        out = gdal_warp(src, dst, data=src.valid.astype(np.uint8)[None], nodata=None)[0]
        assert np.array_equal(dst.valid, out.astype(bool))


def test_records_in_two_crss_share_one_grid(tmp_path: Path, make_server: Callable[..., Any],
                                            backend: DefaultBackend) -> None:
    """Two records of the same AOI (UTM 33 at 10 m, UTM 32 at 20 m) land on one block of one grid, at the
    finer resolution, each equal to GDAL's warp onto that block."""
    paths = [write(tmp_path / "z33.tif", "EPSG:32633", 10.0), write(tmp_path / "z32.tif", "EPSG:32632", 20.0)]
    geoms = aois()[:2]
    results = read_all(paths, make_server, backend, geoms)
    warped = [w for w in warp_results(results, "EPSG:3857") if isinstance(w, ReadResult)]
    grid = target_grid(results, "EPSG:3857")
    assert grid.resolution == pytest.approx(min(source_resolution(r, "EPSG:3857") for r in results))
    assert grid.resolution == pytest.approx(10.0 / math.cos(math.radians(46.07)), rel=0.01)
    for i in range(len(geoms)):
        mine = [w for w in warped if w.geometry_index == i]
        assert len(mine) == 2 and mine[0].window == mine[1].window and mine[0].transform == mine[1].transform
        t = mine[0].transform
        assert t[0] == grid.resolution and t[2] / t[0] == pytest.approx(round(t[2] / t[0]), abs=1e-6)
    for src, dst in zip(results, warped, strict=True):
        assert np.array_equal(gdal_warp(src, dst), dst.data)


def test_same_crs_warp_is_the_read(tmp_path: Path, make_server: Callable[..., Any], backend: DefaultBackend) -> None:
    """Warping onto the raster's own CRS and resolution (grid aligned to it) changes no pixel."""
    results = read_all([write(tmp_path / "s.tif", "EPSG:32633", 10.0)], make_server, backend, aois())
    for src, dst in zip(results, warp_results(results, "EPSG:32633"), strict=True):
        assert isinstance(dst, ReadResult) and src.window is not None and dst.window is not None
        assert src.grid_transform is not None and dst.transform[0] == 10.0
        c0 = round(src.grid_transform[2] / 10.0) + src.window.col_off - dst.window.col_off
        r0 = round(-src.grid_transform[5] / 10.0) + src.window.row_off - dst.window.row_off
        block = dst.data[:, r0 : r0 + src.height, c0 : c0 + src.width]
        assert np.array_equal(block, src.data)
        assert dst.valid.sum() == src.valid.sum()


def test_bilinear_on_floats_follows_gdal(tmp_path: Path, make_server: Callable[..., Any],
                                         backend: DefaultBackend) -> None:
    """Bilinear (float data, NaN nodata never blended in) stays within rounding of GDAL's bilinear where
    both have a value; GDAL and we agree on which pixels have one up to the AOI's boundary ring."""
    results = read_all([write(tmp_path / "f.tif", "EPSG:32633", 10.0, "float32", float("nan"))], make_server,
                       backend, aois())
    for src, dst in zip(results, warp_results(results, "EPSG:32632", resampling="bilinear"), strict=True):
        assert isinstance(dst, ReadResult) and dst.dtype == "float32"
        ref = gdal_warp(src, dst, Resampling.bilinear)[0]
        both = ~np.isnan(ref) & dst.valid
        assert both.sum() > 0.9 * dst.valid.sum()
        assert np.allclose(dst.data[0][both], ref[both], rtol=1e-5, atol=1e-3)
        assert not np.isnan(dst.data[0][dst.valid]).any()
    with pytest.raises(ValueError, match="float"):
        warp_results(read_all([write(tmp_path / "i.tif", "EPSG:32633", 10.0)], make_server, backend, aois()[:1]),
                     "EPSG:4326", resampling="bilinear")
