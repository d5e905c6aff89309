"""The read kernel: plan every tile a batch of (record, AOI, bands) reads needs, fetch each once, decode
each once, mosaic, mask. One function serves RasterAccessor, the DuckDB UDFs and Spark.

A batch is planned as a whole before any byte moves: tiles shared by several AOIs, bands (chunky files)
or records are fetched and decoded once, ranges of one URL go to the backend together so it can coalesce
them, all URLs are fetched concurrently, and each tile is decoded in the thread pool as soon as its bytes
arrive, only down to the last row any window needs.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from ..errors import BandNotFoundError, PixelBudgetExceeded, RasterduckError
from ..tiff.decode import decode_tile
from ..tiff.model import TileFormat
from .geobox import window_transform
from .geometry import transform_geometry
from .metadata import CogMetadata
from .rasterize import geometry_mask
from .window import Window, geometry_window, point_pixel

_DECODE_POOL: ThreadPoolExecutor | None = None
DEFAULT_PIXEL_BUDGET = 512 * 1024 * 1024  # bytes of pixel data one call may materialise


def decode_pool() -> ThreadPoolExecutor:
    """The process-wide decode pool, one worker per core (imagecodecs releases the GIL)."""
    global _DECODE_POOL
    if _DECODE_POOL is None:
        _DECODE_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="rasterduck-decode")
    return _DECODE_POOL


@dataclass(frozen=True)
class BandSource:
    """Where one band of one record lives."""

    band: str
    meta: CogMetadata
    url: str
    band_index: int


@dataclass
class ReadRequest:
    """One (record, AOI) pair: the AOI in its CRS, the bands and where they are."""

    record_id: str
    geometry: BaseGeometry
    geometry_crs: str | None
    bands: list[BandSource]
    all_touched: bool = False


@dataclass
class ReadResult:
    """Pixels of one (record, AOI) pair: (bands, height, width) native dtype, valid mask, geo context."""

    record_id: str
    bands: list[str]
    data: np.ndarray
    valid: np.ndarray
    transform: tuple[float, float, float, float, float, float]
    crs: str | None
    nodata: float | int
    dtype: str

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        return int(self.data.shape[2])


@dataclass
class _BandWindow:
    """Plan of one band of one pair: its window and the tiles it reads."""

    pair: int
    slot: int  # position of the band in the pair's band list
    src: BandSource
    window: Window
    mask: np.ndarray | None  # None: a point (the single pixel is valid)
    tiles: list[tuple[int, int, int]] = field(default_factory=list)  # (tile index, tile row, tile col)


@dataclass
class _Tile:
    url: str
    offset: int
    length: int
    fmt: TileFormat
    rows: int = 0  # decoded rows needed (max over users)
    array: np.ndarray | None = None


def _pair_geometry(req: ReadRequest, crs: str | None) -> BaseGeometry:
    if req.geometry_crs is None or crs is None:
        if crs is None and req.geometry_crs is not None:
            raise RasterduckError("record has no CRS (proj:epsg/crs); cannot place the AOI", record_id=req.record_id)
        return req.geometry
    return transform_geometry(req.geometry, req.geometry_crs, crs)


def plan(requests: Sequence[ReadRequest]) -> tuple[list[_BandWindow | Exception | None], dict[tuple[str, int, int], _Tile]]:
    """Windows, masks and the unique tiles of a batch (pure: no I/O)."""
    windows: list[_BandWindow | Exception | None] = []
    tiles: dict[tuple[str, int, int], _Tile] = {}
    for p, req in enumerate(requests):
        geoms: dict[str | None, BaseGeometry] = {}
        for slot, src in enumerate(req.bands):
            try:
                m = src.meta
                if m.crs not in geoms:
                    geoms[m.crs] = _pair_geometry(req, m.crs)
                g = geoms[m.crs]
                aff = m.affine
                if g.geom_type == "Point":
                    row, col = point_pixel(g.x, g.y, aff)
                    if not (0 <= row < m.image_height and 0 <= col < m.image_width):
                        windows.append(None)
                        continue
                    win = Window(col, row, 1, 1)
                    mask = None
                else:
                    win = geometry_window(g, aff, m.image_width, m.image_height)
                    if win is None or win.width <= 0 or win.height <= 0:
                        windows.append(None)
                        continue
                    wt = window_transform(aff, win.col_off, win.row_off)
                    mask = geometry_mask(g, (win.height, win.width), wt, all_touched=req.all_touched)
                bw = _BandWindow(p, slot, src, win, mask)
                _add_tiles(bw, tiles)
                windows.append(bw)
            except RasterduckError as exc:
                windows.append(exc.with_context(record_id=req.record_id, band=src.band, url=src.url))
            except Exception as exc:  # geometry/CRS errors from shapely/pyproj
                windows.append(RasterduckError(f"{type(exc).__name__}: {exc}", record_id=req.record_id,
                                               band=src.band, url=src.url))
    return windows, tiles


def _add_tiles(bw: _BandWindow, tiles: dict[tuple[str, int, int], _Tile]) -> None:
    m = bw.src.meta
    tw, th = m.tile_width, m.tile_height
    w = bw.window
    across = m.tiles_across
    r0, r1 = w.row_off // th, (w.row_off + w.height - 1) // th
    c0, c1 = w.col_off // tw, (w.col_off + w.width - 1) // tw
    n = len(m.tile_offsets)
    fmt = m.tile_format()
    for tr in range(r0, r1 + 1):
        last_row = min(w.row_off + w.height, (tr + 1) * th, m.image_height) - tr * th  # rows needed
        for tc in range(c0, c1 + 1):
            idx = tr * across + tc
            if idx >= n:
                raise RasterduckError(f"tile table has {n} entries, tile {idx} needed")
            off, cnt = int(m.tile_offsets[idx]), int(m.tile_byte_counts[idx])
            bw.tiles.append((idx, tr, tc))
            if cnt == 0:
                continue  # sparse tile: nodata
            key = (bw.src.url, off, cnt)
            t = tiles.get(key)
            if t is None:
                t = tiles[key] = _Tile(bw.src.url, off, cnt, fmt)
            t.rows = max(t.rows, last_row)


async def fetch_and_decode(tiles: dict[tuple[str, int, int], _Tile], backend: Any) -> dict[tuple[str, int, int], BaseException]:
    """Fetch every tile (one read_ranges call per URL, all URLs at once) and decode as bytes arrive."""
    by_url: dict[str, list[_Tile]] = defaultdict(list)
    for t in tiles.values():
        by_url[t.url].append(t)
    loop = asyncio.get_running_loop()
    pool = decode_pool()
    failures: dict[tuple[str, int, int], BaseException] = {}

    async def one_url(url: str, group: list[_Tile]) -> None:
        try:
            datas = await backend.read_ranges(url, [(t.offset, t.length) for t in group])
        except Exception as exc:
            for t in group:
                failures[(t.url, t.offset, t.length)] = exc
            return
        futs = [loop.run_in_executor(pool, decode_tile, d, t.fmt, t.rows) for t, d in zip(group, datas, strict=True)]
        results = await asyncio.gather(*futs, return_exceptions=True)
        for t, r in zip(group, results, strict=True):
            if isinstance(r, BaseException):
                failures[(t.url, t.offset, t.length)] = r
            else:
                t.array = r

    await asyncio.gather(*(one_url(u, g) for u, g in by_url.items()))
    return failures


def _mosaic(bw: _BandWindow, tiles: dict[tuple[str, int, int], _Tile]) -> tuple[np.ndarray, np.ndarray]:
    """Copy tile rows into the window; returns (pixels, data-present mask)."""
    m = bw.src.meta
    dtype = np.dtype(m.dtype)
    w = bw.window
    out = np.empty((w.height, w.width), dtype=dtype)
    fill = m.fill_value()
    out.fill(fill)
    present = np.zeros((w.height, w.width), dtype=bool)
    tw, th = m.tile_width, m.tile_height
    sample = bw.src.band_index if m.planar_configuration == 1 and m.samples_per_pixel > 1 else 0
    for idx, tr, tc in bw.tiles:
        off, cnt = int(m.tile_offsets[idx]), int(m.tile_byte_counts[idx])
        if cnt == 0:
            continue
        arr = tiles[(bw.src.url, off, cnt)].array
        if arr is None:
            continue
        y0 = max(w.row_off, tr * th)
        y1 = min(w.row_off + w.height, (tr + 1) * th, m.image_height)
        x0 = max(w.col_off, tc * tw)
        x1 = min(w.col_off + w.width, (tc + 1) * tw, m.image_width)
        if y1 <= y0 or x1 <= x0:
            continue
        src = arr[y0 - tr * th : y1 - tr * th, x0 - tc * tw : x1 - tc * tw, sample]
        out[y0 - w.row_off : y1 - w.row_off, x0 - w.col_off : x1 - w.col_off] = src
        present[y0 - w.row_off : y1 - w.row_off, x0 - w.col_off : x1 - w.col_off] = True
    return out, present


def assemble(requests: Sequence[ReadRequest], windows: list[_BandWindow | Exception | None],
             tiles: dict[tuple[str, int, int], _Tile], failures: dict[tuple[str, int, int], BaseException]
             ) -> list[ReadResult | BaseException | None]:
    """Per pair: mosaic its bands, apply the AOI mask and nodata fill, stack (bands share one grid)."""
    per_pair: dict[int, list[_BandWindow | Exception | None]] = defaultdict(list)
    it = iter(windows)
    for p, req in enumerate(requests):
        for _ in req.bands:
            per_pair[p].append(next(it))
    out: list[ReadResult | BaseException | None] = []
    for p, req in enumerate(requests):
        bws = per_pair[p]
        err = next((b for b in bws if isinstance(b, Exception)), None)
        if err is not None:
            out.append(err)
            continue
        if all(b is None for b in bws) or not bws:
            out.append(None)
            continue
        if any(b is None for b in bws):
            out.append(RasterduckError("bands of this record do not share one grid (AOI misses some bands)",
                                       record_id=req.record_id))
            continue
        good = [b for b in bws if isinstance(b, _BandWindow)]
        first = good[0]
        grid = (first.window, first.src.meta.affine, first.src.meta.crs)
        if any((b.window, b.src.meta.affine, b.src.meta.crs) != grid for b in good[1:]):
            out.append(RasterduckError("requested bands have different grids (resolution or extent); read them separately",
                                       record_id=req.record_id))
            continue
        dtypes = {b.src.meta.dtype for b in good}
        if len(dtypes) > 1:
            out.append(RasterduckError(f"requested bands have different dtypes {sorted(dtypes)}; read them separately",
                                       record_id=req.record_id))
            continue
        failed = None
        for b in good:
            for idx, _tr, _tc in b.tiles:
                off, cnt = int(b.src.meta.tile_offsets[idx]), int(b.src.meta.tile_byte_counts[idx])
                exc = failures.get((b.src.url, off, cnt))
                if exc is not None:
                    failed = _wrap(exc, req.record_id, b.src)
                    break
            if failed is not None:
                break
        if failed is not None:
            out.append(failed)
            continue
        h, w = first.window.height, first.window.width
        data = np.empty((len(good), h, w), dtype=np.dtype(first.src.meta.dtype))
        valid = np.ones((h, w), dtype=bool) if first.mask is None else first.mask.copy()
        fill = first.src.meta.fill_value()
        nodata = first.src.meta.nodata
        for i, b in enumerate(good):
            px, present = _mosaic(b, tiles)
            if first.mask is not None:
                px[~first.mask] = fill
            data[i] = px
            valid &= present
            if nodata is not None:
                valid &= ~np.isnan(px) if isinstance(nodata, float) and math.isnan(nodata) else px != nodata
        transform = window_transform(first.src.meta.affine, first.window.col_off, first.window.row_off)
        out.append(ReadResult(req.record_id, [b.src.band for b in good], data, valid, transform,
                              first.src.meta.crs, fill, str(np.dtype(first.src.meta.dtype))))
    return out


def _wrap(exc: BaseException, record_id: str, src: BandSource) -> BaseException:
    if isinstance(exc, RasterduckError):
        return exc.with_context(record_id=record_id, band=src.band, url=src.url)
    return RasterduckError(f"{type(exc).__name__}: {exc}", record_id=record_id, band=src.band, url=src.url)


def check_budget(windows: Sequence[_BandWindow | Exception | None], budget: int | None) -> None:
    """Fail before fetching when the batch would materialise more pixel bytes than `budget`."""
    if budget is None:
        return
    total = sum(b.window.width * b.window.height * np.dtype(b.src.meta.dtype).itemsize
                for b in windows if isinstance(b, _BandWindow))
    if total > budget:
        raise PixelBudgetExceeded(
            f"this call would read {total / 1e6:.1f} MB of pixels, over the budget of {budget / 1e6:.1f} MB; "
            "raise pixel_budget or send fewer/smaller AOIs per call"
        )


async def read_batch(requests: Sequence[ReadRequest], backend: Any, *, pixel_budget: int | None = DEFAULT_PIXEL_BUDGET
                     ) -> list[ReadResult | BaseException | None]:
    """Read a batch of pairs; per pair a ReadResult, None (AOI misses the raster) or the error."""
    windows, tiles = plan(requests)
    check_budget(windows, pixel_budget)
    failures = await fetch_and_decode(tiles, backend)
    return assemble(requests, windows, tiles, failures)


def band_sources(accessor: Any, bands: Sequence[str]) -> list[BandSource]:
    """Resolve band codes of a RasterAccessor into sources; unknown bands raise BandNotFoundError."""
    out = []
    for b in bands:
        meta, url, idx = accessor.try_get_band_cog_metadata(b)
        if meta is None or url is None:
            raise BandNotFoundError(f"band {b!r} not found (assets: {sorted(accessor.info.assets)})",
                                    record_id=accessor.id, band=b)
        out.append(BandSource(b, meta, url, idx or 0))
    return out
