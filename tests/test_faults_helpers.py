"""Shared by the fault, soak, bad-input and untrusted-collection tests (no tests here).

A generated uint16 COG in UTM 33N (tiled, DEFLATE + predictor 2) served by the real range server,
small random AOIs over it in EPSG:4326, the rasterio oracle (`rasterio.mask.mask(crop=True)`), fast
HTTP options for retry tests, and the process's open sockets / file descriptors from /proc/self/fd.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import shapely
from shapely.geometry.base import BaseGeometry

import rasterduck
from rasterduck.core.read import ReadResult
from rasterduck.io import DefaultBackend, HttpOptions

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_800_000.0)  # upper-left corner, metres
PIXEL = 10.0

# every await bounded by a short timeout and retries with a tiny backoff: faults cost milliseconds
FAST = HttpOptions(backoff_base=0.002, backoff_max=0.01, connect_timeout=2.0, first_byte_timeout=3.0,
                   read_timeout=3.0, attempt_timeout=20.0, max_attempts=6, retry_after_max=2.0)
# stalls are detected by these (a stalled answer costs 0.5 s)
STALLS = replace(FAST, first_byte_timeout=0.5, read_timeout=0.5)


def write_cog(path: Path, *, width: int = 512, height: int = 512, tile: int = 128, seed: int = 7,
              nodata: int | None = None) -> Path:
    """A DEFLATE + predictor 2 uint16 cloud-optimized GeoTIFF with overviews (GDAL's COG driver; tiles of
    at least 128 pixels) in UTM 33N."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = (2000 + 900 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 3 * xx).astype(np.int64)
    data = (smooth + rng.integers(0, 400, size=(height, width))).clip(1, 65535).astype(np.uint16)
    profile: dict[str, Any] = {
        "driver": "COG", "width": width, "height": height, "count": 1, "dtype": "uint16", "crs": CRS,
        "transform": from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL), "blocksize": tile,
        "compress": "DEFLATE", "predictor": 2, "overview_resampling": "nearest",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def to_4326(geom: BaseGeometry, crs: str = CRS) -> BaseGeometry:
    """Move a geometry from `crs` into lon/lat."""
    tr = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def from_4326(geom: BaseGeometry, crs: str = CRS) -> BaseGeometry:
    """Move a lon/lat geometry into `crs`."""
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def pixel_box(col: float, row: float, w: float, h: float) -> BaseGeometry:
    """A box given in pixel coordinates of the generated raster, as a lon/lat polygon."""
    x0, y0 = ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL
    return to_4326(shapely.box(x0, y0 - h * PIXEL, x0 + w * PIXEL, y0))


def random_aois(n: int, *, seed: int = 1, width: int = 512, height: int = 512, max_px: int = 14) -> list[BaseGeometry]:
    """`n` small lon/lat AOIs inside the raster: boxes and triangles of 2..max_px pixels, off-grid corners."""
    rng = np.random.default_rng(seed)
    out: list[BaseGeometry] = []
    for k in range(n):
        w, h = rng.uniform(2, max_px, size=2)
        col, row = rng.uniform(0, width - w - 1), rng.uniform(0, height - h - 1)
        if k % 3 == 2:
            x0, y0 = ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL
            tri = shapely.Polygon([(x0, y0), (x0 + w * PIXEL, y0 - 0.3 * h * PIXEL), (x0 + 0.4 * w * PIXEL,
                                                                                      y0 - h * PIXEL)])
            out.append(to_4326(tri))
        else:
            out.append(pixel_box(col, row, w, h))
    return out


def rio_read(path: Path, geom4326: BaseGeometry) -> tuple[np.ndarray, np.ndarray] | None:
    """rasterio's answer for an AOI: filled data (bands, h, w) and the valid mask; None when it misses."""
    import rasterio
    import rasterio.mask
    from shapely.geometry import mapping

    with rasterio.open(path) as src:
        g = mapping(from_4326(geom4326, str(src.crs)))
        try:
            filled, _ = rasterio.mask.mask(src, [g], crop=True, filled=True)
            masked, _ = rasterio.mask.mask(src, [g], crop=True, filled=False)
        except ValueError:  # "Input shapes do not overlap raster."
            return None
    return filled, ~np.ma.getmaskarray(masked).any(axis=0)


def assert_matches_rasterio(results: Sequence[ReadResult | None], path: Path, aois: Sequence[BaseGeometry]) -> None:
    """Each result equals rasterio's read of the same AOI: pixels, valid mask, shape and dtype."""
    for r, g in zip(results, aois, strict=True):
        ref = rio_read(path, g)
        if ref is None:
            assert r is None
            continue
        assert r is not None
        assert r.data.dtype == ref[0].dtype
        np.testing.assert_array_equal(r.data, ref[0])
        np.testing.assert_array_equal(r.valid, ref[1])


def by_pair(results: Sequence[Any]) -> dict[tuple[str, int], ReadResult]:
    """Collection.read results keyed by (record id, AOI index)."""
    return {(r.record_id, int(r.geometry_index)): r for r in results if isinstance(r, ReadResult)}


def same_pixels(a: dict[tuple[str, int], ReadResult], b: dict[tuple[str, int], ReadResult]) -> None:
    """Two keyed result sets hold the same pairs with equal pixels, masks and windows."""
    assert a.keys() == b.keys()
    for k, r in a.items():
        s = b[k]
        assert r.window == s.window, k
        assert r.data.dtype == s.data.dtype, k
        np.testing.assert_array_equal(r.data, s.data, err_msg=str(k))
        np.testing.assert_array_equal(r.valid, s.valid, err_msg=str(k))


def build(urls: Sequence[str], ids: Sequence[str], bands: Sequence[str] = ("b1",)) -> rasterduck.Collection:
    """A collection of one record per URL (samples named `bands`), built with a fault-free backend that
    is closed after."""
    from rasterduck.io import run_sync

    backend = DefaultBackend(http=FAST)
    try:
        c = rasterduck.build_collection(list(urls), ids=list(ids), bands=list(bands), backend=backend)
    finally:
        run_sync(backend.close())
    assert c.errors() == []
    return c


def open_fds() -> dict[str, str]:
    """This process's open file descriptors: fd number -> what it points at (socket:[inode], a path...)."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, already closed
    return found


def sockets() -> set[str]:
    """The sockets this process holds, by inode."""
    return {t for t in open_fds().values() if t.startswith("socket:")}


def settle(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `check` until it holds (closing sockets takes a loop iteration or two); its last answer."""
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return check()


def new_fds(before: dict[str, str]) -> dict[str, str]:
    """Descriptors open now that were not open (or pointed elsewhere) in `before`, ignoring pipes and
    eventfds of thread pools and event loops created meanwhile (they are per process, not per read)."""
    now = open_fds()
    return {fd: t for fd, t in now.items()
            if before.get(fd) != t and not t.startswith(("pipe:", "anon_inode:"))}


def idle_server(server: Any) -> Iterator[Any]:
    """A test server idle, without faults and with zeroed counters, before and after the test using it."""
    server.wait_idle()
    server.reset()
    yield server
    server.reset()
