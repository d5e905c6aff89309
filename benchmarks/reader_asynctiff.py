"""Reader: async-tiff (PyPI) over an obstore HTTPStore, with tile planning written here.

Per file (all files concurrently): open the TIFF (one prefetch covers the COG header), take the
full-resolution IFD's geotransform, then for every AOI of that scene: AOI -> raster CRS (pyproj,
always_xy) -> window (rasterio's geometry_window rule: floor/ceil of the bounds through the inverse
affine, clamped) -> the tiles it touches. The file's unique tiles are fetched with one `fetch_tiles`
call and each is decoded once (async-tiff's thread pool); windows are mosaicked from them and masked
with rasterio.features.geometry_mask on the window (pixels outside the AOI -> nodata 0).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, key, main_guard, pixel_hash

run = Run("async-tiff")

import asyncio  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402
import shapely  # noqa: E402
from affine import Affine  # noqa: E402
from async_tiff import TIFF, ThreadPool  # noqa: E402
from obstore.store import HTTPStore  # noqa: E402
from pyproj import Transformer  # noqa: E402
from rasterio.errors import WindowError  # noqa: E402
from rasterio.features import geometry_mask, geometry_window  # noqa: E402
from rasterio.windows import Window  # noqa: E402
from rasterio.windows import transform as window_transform  # noqa: E402

run.imported()


class _Grid:
    """What geometry_window needs of a dataset: transform, width, height."""

    def __init__(self, transform: Affine, width: int, height: int) -> None:
        self.transform, self.width, self.height = transform, width, height


def _affine(ifd: Any) -> Affine:
    sx, sy = ifd.model_pixel_scale[:2]
    _i, _j, _k, x, y = ifd.model_tiepoint[:5]
    return Affine(sx, 0.0, x, 0.0, -sy, y)


async def one_file(store: HTTPStore, pool: ThreadPool, path: str, geoms: list[tuple[str, Any]],
                   sem: asyncio.Semaphore) -> list[tuple[str, np.ndarray]]:
    """Windows of every AOI from one single-band file."""
    async with sem:
        tiff = await TIFF.open(path, store=store, prefetch=65536)
        ifd = tiff.ifds[0]
        aff = _affine(ifd)
        grid = _Grid(aff, ifd.image_width, ifd.image_height)
        tw, th = ifd.tile_width, ifd.tile_height
        nodata = int(float(ifd.gdal_nodata)) if ifd.gdal_nodata else 0
        plans = []
        needed: set[tuple[int, int]] = set()
        for aoi_id, g in geoms:
            try:
                win = geometry_window(grid, [g])
            except WindowError:
                continue
            r0, c0, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
            if h <= 0 or w <= 0:
                continue
            tiles = [(tc, tr) for tr in range(r0 // th, (r0 + h - 1) // th + 1) for tc in range(c0 // tw, (c0 + w - 1) // tw + 1)]
            needed.update(tiles)
            plans.append((aoi_id, g, r0, c0, h, w, tiles))
        if not needed:
            return []
        order = sorted(needed, key=lambda t: (t[1], t[0]))
        fetched = await ifd.fetch_tiles(order)
        where = [(t.x, t.y) for t in fetched]  # a tile cannot be asked after decode consumed it
        arrays = await asyncio.gather(*(t.decode(pool=pool) for t in fetched))
    decoded = {xy: np.asarray(a).reshape(th, tw) for xy, a in zip(where, arrays, strict=True)}
    out = []
    for aoi_id, g, r0, c0, h, w, tiles in plans:
        px = np.empty((h, w), np.uint16)
        for tc, tr in tiles:
            y0, y1 = max(r0, tr * th), min(r0 + h, (tr + 1) * th)
            x0, x1 = max(c0, tc * tw), min(c0 + w, (tc + 1) * tw)
            px[y0 - r0:y1 - r0, x0 - c0:x1 - c0] = decoded[(tc, tr)][y0 - tr * th:y1 - tr * th, x0 - tc * tw:x1 - tc * tw]
        outside = geometry_mask([g], out_shape=(h, w), transform=window_transform(Window(c0, r0, w, h), aff))
        px[outside] = nodata
        out.append((aoi_id, px))
    return out


def body() -> dict[str, str]:
    """Read all pairs; return hashes."""
    spec = run.spec
    base = spec["base_url"] + "/"
    store = HTTPStore.from_url(base, client_options={"allow_http": True})
    pool = ThreadPool(os.cpu_count() or 2)
    aois = [shapely.from_wkb(bytes.fromhex(a["wkb"])) for a in spec["aois"]]
    transformers: dict[int, Transformer] = {}
    jobs = []
    for scene_idx, aoi_idx in spec["pairs"]:
        scene = spec["scenes"][scene_idx]
        epsg = scene["epsg"]
        if epsg not in transformers:
            transformers[epsg] = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True)
        t = transformers[epsg]
        geoms = [(spec["aois"][i]["id"], shapely.transform(aois[i], lambda xy, t=t: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))))
                 for i in aoi_idx]
        for band in spec["bands"]:
            jobs.append((scene["id"], band, scene["assets"][band][len(base):], geoms))

    async def everything() -> list[list[tuple[str, np.ndarray]]]:
        sem = asyncio.Semaphore(int(spec.get("threads", 64)))
        return await asyncio.gather(*(one_file(store, pool, path, geoms, sem) for _, _, path, geoms in jobs))

    results = asyncio.run(everything())
    run.done()
    run.extra["files"] = len(jobs)
    hashes = {}
    for (sid, band, _, _), res in zip(jobs, results, strict=True):
        for aoi_id, px in res:
            hashes[key(aoi_id, sid, band)] = pixel_hash(px)
    return hashes


main_guard(run, body)
