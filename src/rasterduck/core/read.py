"""The read kernel: plan every tile a batch of (record, AOI, bands) reads needs, fetch each once, decode
each once, write it straight into the results. One function serves RasterAccessor, the DuckDB UDFs and Spark.

A batch's windows are planned as a whole before any byte moves (so the pixel budget is checked first),
then its pixel arrays and tiles one file group at a time, each group's fetch starting while the next is
planned. A tile shared by several AOIs, bands (chunky files) or records is fetched and decoded once,
decoded only down to the last row any window needs, and copied into every result that uses it right
after decoding (in the decode thread), so a batch holds its outputs plus the tiles in flight, never all
tiles at once. (Finishing each result in the decode thread that copies its last tile was tried: on two
cores it only competes with decoding, S2 0.40 -> 0.46 s.)
Ranges of one URL are coalesced the way the backend would, and each coalesced group is its own
`read_ranges` call, so decoding starts as soon as the first group arrives.

Results follow `rasterio.mask.mask(..., crop=True, filled=True)` pixel for pixel: the AOI mask, the GDAL
mask band (nodata, internal mask, alpha; see gdalmask.py) and sparse tiles decide which pixels hold
data; every other pixel holds the fill value (nodata, else 0). Points and pixel windows read the stored
values, like `rasterio.sample` and `dataset.read`; there GDAL's mask only shows in `valid`.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np
import pyproj
import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import (
    BandNotFoundError,
    DecodeError,
    FetchError,
    GeometryError,
    PixelBudgetExceeded,
    RasterduckError,
    TruncatedTileError,
)
from ..gcpause import without_gc_step
from ..io.backend import Counters
from ..io.ranges import DEFAULT_MAX_GAP, DEFAULT_MAX_SIZE, coalesce
from ..tiff.decode import decode_tile, prefix_length
from ..tiff.model import TileFormat
from .gdalmask import (
    MaskKind,
    alpha_sample,
    decode_mask_tile,
    fill_scalar,
    internal_mask,
    mask_kind,
    nodata_valid,
)
from .geobox import Affine6, window_transform
from .geometry import crs_key, transform_geometries, transform_geometry
from .metadata import CogMetadata
from .rasterize import geometry_mask, geometry_masks
from .window import TilePart, Window, geometry_window, geometry_windows, point_pixel, tiles_for_window

_DECODE_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
DEFAULT_PIXEL_BUDGET = 512 * 1024 * 1024  # bytes of pixel data one call may materialise


def decode_pool() -> ThreadPoolExecutor:
    """The process-wide decode pool, one worker per core (imagecodecs and zlib release the GIL)."""
    global _DECODE_POOL
    with _POOL_LOCK:
        if _DECODE_POOL is None:
            _DECODE_POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="rasterduck-decode")
        return _DECODE_POOL


@dataclass(frozen=True)
class BandSource:
    """Where one band of one record lives: its metadata, URL and sample index in that file."""

    band: str
    meta: CogMetadata
    url: str
    band_index: int
    alpha: BandSource | None = None  # the file's alpha plane, when it masks this band and is stored apart


@dataclass
class ReadRequest:
    """One (record, AOI) pair: the AOI in its CRS (or a pixel window), the bands and where they are.

    `window` = (col_off, row_off, width, height) in the bands' pixel grid reads that block instead of an
    AOI (no AOI mask; clipped to the raster). `geometry_index` is carried into the result untouched.
    """

    record_id: str
    geometry: BaseGeometry | None
    geometry_crs: str | int | None
    bands: list[BandSource]
    all_touched: bool = False
    window: tuple[int, int, int, int] | Window | None = None
    geometry_index: int | None = None


@dataclass
class ReadResult:
    """Pixels of one (record, AOI) pair: (bands, height, width) native dtype, valid mask, geo context.

    `valid` (height, width) is True inside the AOI, in stored (non-sparse) tiles, where every file's GDAL
    mask (internal mask or alpha) allows and at least one band differs from nodata (rasterio's dataset
    mask rule); pixels an AOI read leaves out hold `nodata` (the fill: nodata, else 0). `window` is the
    block of the grid `grid_transform` describes (the raster's own grid, or the shared target grid after
    warping); `transform` is the transform of the block itself.
    """

    record_id: str
    bands: list[str]
    data: np.ndarray
    valid: np.ndarray
    transform: Affine6
    crs: str | None
    nodata: float | int
    dtype: str
    window: Window | None = None
    grid_transform: Affine6 | None = None
    geometry_index: int | None = None

    @property
    def height(self) -> int:
        """Rows of the result."""
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        """Columns of the result."""
        return int(self.data.shape[2])


@dataclass
class ReadStats(Counters):
    """What one or more read_batch calls did: unique tiles, sparse tiles, fetch calls, decodes, time."""

    tiles: int = 0
    sparse_tiles: int = 0
    mask_tiles: int = 0
    fetch_calls: int = 0
    bytes_fetched: int = 0
    prefix_tiles: int = 0  # tiles fetched as a leading part (their rows end early in the tile)
    prefix_refetches: int = 0  # of those, tiles whose prefix fell short: the rest fetched in a second request
    decoded: int = 0
    decoded_rows: int = 0  # rows decoded, over all tiles (partial decoding stops at the last needed row)
    tile_rows: int = 0  # rows those tiles hold
    decode_seconds: float = 0.0
    fetch_seconds: float = 0.0
    results: int = 0


# ---------------------------------------------------------------------------------------------------
# plan


_NO_PIXELS = np.empty((0, 0, 0))  # a job's pixels before allocation: empty, so never written


@dataclass
class _Job:
    """One request being assembled: its window, outputs and masks (arrays are written by decode threads)."""

    index: int
    req: ReadRequest
    meta: CogMetadata
    window: Window
    raw: bool  # a point or pixel window: values as stored (rasterio.sample / read), mask only in `valid`
    aoi: np.ndarray | None  # (h, w) True inside the AOI; None: no AOI mask (point or pixel window)
    masks: list[_Mask]  # per-dataset masks (internal mask or alpha) of the files the bands come from
    fill: np.generic
    geom: BaseGeometry | None = None  # the AOI in the raster's CRS, rasterised into `aoi` by `rasterize_aois`
    data: np.ndarray = field(default_factory=lambda: _NO_PIXELS)  # replaced by `allocate`
    missing: np.ndarray | None = None  # (h, w) True where a band's tile is sparse
    error: BaseException | None = None
    # packed reads: where `data` and the valid mask go, carved from one buffer per dtype (see pack_outputs)
    data_slot: np.ndarray | None = None
    valid_slot: np.ndarray | None = None


@dataclass
class _Mask:
    """One file's per-dataset mask within a job: where it comes from, which bands it hides, its pixels."""

    kind: MaskKind  # INTERNAL or ALPHA
    src: BandSource  # a band of that file
    slots: list[int]  # the job's bands it applies to
    valid: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=bool))  # (h, w) True = valid


@dataclass(slots=True)
class _Use:
    """One job's use of one tile: the part it needs and where the samples go."""

    job: _Job
    part: TilePart
    targets: list[tuple[int, int]]  # (band slot in the job, sample in the tile)
    mask: _Mask | None = None  # the mask this tile's alpha sample or mask bits feed
    alpha: int | None = None  # sample holding alpha (None with `mask`: the tile is an internal-mask tile)


@dataclass
class _Tile:
    """One stored tile (or strip) of one URL, needed by one or more jobs."""

    url: str
    offset: int
    length: int
    fmt: TileFormat | None  # None: an internal-mask tile
    rows: int = 0  # leading rows to decode: the most any use needs
    uses: list[_Use] = field(default_factory=list)
    error: BaseException | None = None
    mask_size: tuple[int, int] = (0, 0)  # internal-mask tiles: (tile width, tile height)
    fetch_length: int = 0  # leading bytes fetched first (set when the group's tiles are complete)


_TileKey = tuple[str, int, int]


class _Planner:
    """Turns requests into jobs and a table of unique tiles, sharing geometry and mask work."""

    def __init__(self) -> None:
        self.tiles: dict[_TileKey, _Tile] = {}
        self.sparse = 0
        self._geoms: dict[tuple[int, str | int | None, str | None], BaseGeometry] = {}
        self._formats: dict[int, TileFormat] = {}
        self._misses: dict[tuple[Any, ...], str | None] = {}
        self._windows: dict[tuple[Any, ...], Window | None] = {}
        self._fills: dict[tuple[str, str], np.generic] = {}
        # per band list (a join's rows of one record share it; kept alive here so its id stays unique): the
        # grid check passed, and what every job of that list shares -- its per-file masks and its fill
        self._band_facts: dict[int, tuple[list[BandSource], tuple[tuple[MaskKind, BandSource, list[int]], ...],
                                          np.generic]] = {}
        self._points: dict[int, bool] = {}  # per AOI (by id, as the window cache): is it a point

    def job(self, index: int, req: ReadRequest) -> _Job | None:
        """Window, AOI mask and mask kind of one request; None when it misses the raster."""
        if not req.bands:
            raise RasterduckError("no bands requested", record_id=req.record_id)
        meta = req.bands[0].meta
        facts = self._band_facts.get(id(req.bands))
        if facts is None:
            facts = self._band_facts[id(req.bands)] = self._facts(req)
        raw = True
        aoi = None
        if req.window is not None:
            win = _as_window(req.window).intersection(Window(0, 0, meta.image_width, meta.image_height))
            if win is None:
                return None
        else:
            if req.geometry is None:
                raise RasterduckError("a request needs a geometry or a window", record_id=req.record_id)
            geom = self._geometry(req, meta.crs)
            point = self._points.get(id(geom))
            if point is None:
                point = self._points[id(geom)] = geom.geom_type == "Point"
            if point:
                row, col = point_pixel(geom.x, geom.y, meta.affine)
                if not (0 <= row < meta.image_height and 0 <= col < meta.image_width):
                    self._check_miss(req, meta)
                    return None
                win = Window(col, row, 1, 1)
            else:
                raw = False
                wkey = (id(geom), meta.affine, meta.image_width, meta.image_height)
                if wkey in self._windows:  # scenes of one grid (a time series) share the window
                    found = self._windows[wkey]
                else:
                    found = self._windows[wkey] = geometry_window(geom, meta.affine, meta.image_width,
                                                                  meta.image_height)
                if found is None:
                    self._check_miss(req, meta)
                    return None
                win = found
        masks = [_Mask(kind, src, list(slots)) for kind, src, slots in facts[1]]
        return _Job(index, req, meta, win, raw, aoi, masks, facts[2], geom=None if raw else geom)

    def _facts(self, req: ReadRequest) -> tuple[list[BandSource], tuple[tuple[MaskKind, BandSource, list[int]], ...],
                                                np.generic]:
        """Check that a band list shares one grid, and find its per-file masks and its fill value."""
        if len(req.bands) > 1:
            _check_same_grid(req)
        # an alpha plane stored apart is read only when the source knows where it is
        kinds = [MaskKind.ALL_VALID if k is MaskKind.ALPHA and not _chunky(s.meta) and s.alpha is None else k
                 for s in req.bands for k in [mask_kind(s.meta, s.band_index)]]
        # one mask per file that has one, applied to that file's bands
        masks: dict[str, tuple[MaskKind, BandSource, list[int]]] = {}
        for i, (src, k) in enumerate(zip(req.bands, kinds, strict=True)):
            if k in (MaskKind.INTERNAL, MaskKind.ALPHA):
                masks.setdefault(src.url, (k, src, []))[2].append(i)
        return req.bands, tuple(masks.values()), self._fill(req.bands[0].meta)

    def allocate(self, job: _Job) -> None:
        """Create the job's arrays and register every tile it needs (sparse tiles are filled right away)."""
        req, meta, win = job.req, job.meta, job.window
        h, w = win.height, win.width
        job.data = (job.data_slot if job.data_slot is not None
                    else np.empty((len(req.bands), h, w), dtype=np.dtype(meta.dtype)))
        for m in job.masks:
            m.valid = np.zeros((h, w), dtype=bool)
        parts = tiles_for_window(win, meta.tile_width, meta.tile_height, meta.image_width, meta.image_height)
        across = meta.tiles_across
        chunky_alpha = {m.src.url: m for m in job.masks if m.kind is MaskKind.ALPHA and _chunky(m.src.meta)}
        # per band, once per job (a batch of small AOIs allocates thousands of jobs): slot and sample
        bands = [(slot, src, src.band_index if _chunky(src.meta) else 0) for slot, src in enumerate(req.bands)]
        for part in parts:
            pending: dict[str, _Mask | None] | None = dict(chunky_alpha) if chunky_alpha else None
            idx = part.tile_row * across + part.tile_col
            by_key: dict[_TileKey | None, list[tuple[int, int]]] = {}
            sources: dict[_TileKey | None, BandSource] = {}
            for slot, src, sample in bands:
                key = _tile_key(src, idx)
                targets = by_key.get(key)
                if targets is None:
                    by_key[key] = [(slot, sample)]
                    sources[key] = src
                else:
                    targets.append((slot, sample))
            for key, targets in by_key.items():
                if key is None:  # sparse: the bands of this tile read as the fill value (alpha reads 0)
                    self.sparse += 1
                    self._fill_sparse(job, part, targets)
                    continue
                use = _Use(job, part, targets)
                found = pending.pop(key[0], None) if pending else None  # the chunky tile also holds the alpha
                if found is not None:
                    use.mask, use.alpha = found, alpha_sample(found.src.meta)
                self._add(key, self._format(sources[key].meta), part.rows_needed, use)
        for m in job.masks:
            if m.kind is MaskKind.INTERNAL:
                self._add_mask_tiles(job, m)
            elif m.src.alpha is not None and not _chunky(m.src.meta):
                self._add_alpha_plane(job, m, m.src.alpha, parts)

    def _add_alpha_plane(self, job: _Job, mask: _Mask, src: BandSource, parts: list[TilePart]) -> None:
        across = src.meta.tiles_across
        for part in parts:
            key = _tile_key(src, part.tile_row * across + part.tile_col)
            if key is not None:  # a sparse alpha tile reads as 0: nothing valid there
                self._add(key, self._format(src.meta), part.rows_needed, _Use(job, part, [], mask, 0))

    def _add_mask_tiles(self, job: _Job, mask: _Mask) -> None:
        level = internal_mask(mask.src.meta)
        if level is None:  # pragma: no cover - kind INTERNAL implies a mask
            return
        url = mask.src.url
        parts = tiles_for_window(job.window, level.tile_width, level.tile_height, level.image_width,
                                 level.image_height)
        across = -(-level.image_width // level.tile_width)
        for part in parts:
            idx = part.tile_row * across + part.tile_col
            if idx >= len(level.tile_offsets):
                raise RasterduckError(f"mask tile table has {len(level.tile_offsets)} entries, tile {idx} needed")
            off, cnt = int(level.tile_offsets[idx]), int(level.tile_byte_counts[idx])
            if cnt <= 0 or off <= 0:
                continue  # a sparse mask tile: nothing valid there (the mask stays False)
            self._add((url, off, cnt), None, part.rows_needed, _Use(job, part, [], mask),
                      mask_size=(level.tile_width, level.tile_height))

    def _add(self, key: _TileKey, fmt: TileFormat | None, rows: int, use: _Use,
             mask_size: tuple[int, int] | None = None) -> None:
        tile = self.tiles.get(key)
        if tile is None:
            tile = self.tiles[key] = _Tile(key[0], key[1], key[2], fmt)
            if mask_size is not None:
                tile.mask_size = mask_size
        tile.rows = max(tile.rows, rows)
        tile.uses.append(use)

    def take_tiles(self) -> dict[_TileKey, _Tile]:
        """The tiles registered since the last call (a file group's, handed to its fetch), each with the
        prefix worth fetching: only the bytes of the rows its uses need, where the codec allows."""
        tiles, self.tiles = self.tiles, {}
        for t in tiles.values():
            t.fetch_length = t.length if t.fmt is None else prefix_length(t.fmt, t.rows, t.length)
        return tiles

    def _fill_sparse(self, job: _Job, part: TilePart, targets: list[tuple[int, int]]) -> None:
        ys, xs = _dest(part)
        for slot, _sample in targets:
            job.data[slot, ys, xs] = job.fill
        if job.missing is None:
            job.missing = np.zeros(job.window.shape, dtype=bool)
        job.missing[ys, xs] = True

    def _format(self, meta: CogMetadata) -> TileFormat:
        fmt = self._formats.get(id(meta))
        if fmt is None:
            fmt = self._formats[id(meta)] = meta.tile_format()
        return fmt

    def _fill(self, meta: CogMetadata) -> np.generic:
        value = meta.fill_value()
        key = (meta.dtype, repr(value))
        fill = self._fills.get(key)
        if fill is None:
            fill = self._fills[key] = fill_scalar(np.dtype(meta.dtype), value)
        return fill

    def move_geometries(self, requests: Sequence[ReadRequest]) -> None:
        """Move every distinct AOI into the raster CRSs it meets before the per-request work, one PROJ call
        per CRS pair (a batch repeats each AOI for many scenes). An AOI PROJ cannot move is left to the
        per-request path, which raises its exact error in that request's slot."""
        todo: dict[tuple[str | int, str], dict[int, BaseGeometry]] = {}
        for req in requests:
            if req.geometry is None or req.geometry_crs is None or not req.bands:
                continue
            crs = req.bands[0].meta.crs
            if crs is not None and (id(req.geometry), req.geometry_crs, crs) not in self._geoms:
                todo.setdefault((req.geometry_crs, crs), {})[id(req.geometry)] = req.geometry
        for (src, dst), distinct in todo.items():
            try:
                moved = transform_geometries(list(distinct.values()), src, dst)
            except RasterduckError:
                continue
            for gid, m in zip(distinct, moved, strict=True):
                if not isinstance(m, RasterduckError):
                    self._geoms[(gid, src, dst)] = m

    def prepare_windows(self, requests: Sequence[ReadRequest]) -> None:
        """Windows of every distinct (AOI, grid) of the batch, one vectorised pass per grid, into the window
        cache `job` reads. AOIs still to be moved or failing are left to the per-request path."""
        todo: dict[tuple[Affine6, int, int], dict[int, BaseGeometry]] = {}
        for req in requests:
            if req.geometry is None or req.window is not None or not req.bands:
                continue
            meta = req.bands[0].meta
            geom = self._geoms.get((id(req.geometry), req.geometry_crs, meta.crs))
            if geom is None:
                if req.geometry_crs is not None:
                    continue
                geom = req.geometry
            grid = (meta.affine, meta.image_width, meta.image_height)
            if (id(geom), *grid) not in self._windows and geom.geom_type != "Point":
                todo.setdefault(grid, {})[id(geom)] = geom
        for (affine, width, height), distinct in todo.items():
            try:
                found = geometry_windows(list(distinct.values()), affine, width, height)
            except Exception:  # shapely surprises: the per-request path reports them
                continue
            for gid, win in zip(distinct, found, strict=True):
                if not isinstance(win, GeometryError):
                    self._windows[(gid, affine, width, height)] = win

    def _geometry(self, req: ReadRequest, crs: str | None) -> BaseGeometry:
        assert req.geometry is not None
        key = (id(req.geometry), req.geometry_crs, crs)
        geom = self._geoms.get(key)
        if geom is None:
            if req.geometry_crs is None or crs is None:
                if crs is None and req.geometry_crs is not None:
                    raise RasterduckError("record has no CRS (proj:epsg/crs); cannot place the AOI",
                                          record_id=req.record_id)
                geom = req.geometry
            else:
                geom = transform_geometry(req.geometry, req.geometry_crs, crs)
            self._geoms[key] = geom
        return geom

    def _check_miss(self, req: ReadRequest, meta: CogMetadata) -> None:
        """An AOI that misses the raster is no error (None), unless it looks like it is in the wrong CRS or
        axis order (see `misplaced_aoi`): then GeometryError, so a swapped lat/lon does not read as 'no data'."""
        assert req.geometry is not None
        key = (id(req.geometry), req.geometry_crs, meta.crs, meta.affine, meta.image_width, meta.image_height)
        if key in self._misses:
            msg = self._misses[key]
        else:
            def hits(g: BaseGeometry) -> bool:
                moved = transform_geometry(g, "EPSG:4326", meta.crs) if meta.crs is not None else g
                return geometry_window(moved, meta.affine, meta.image_width, meta.image_height) is not None

            msg = self._misses[key] = misplaced_aoi(req.geometry, req.geometry_crs, meta.crs, hits)
        if msg is not None:
            raise GeometryError(msg, record_id=req.record_id)


class _MaskCache:
    """AOI masks shared across calls: a time series reads one field from many scenes on the same grid, and
    the SQL layer sees each row's AOI as a fresh geometry, so masks are keyed by the geometry's WKB, the
    grid and the window. Bounded by the number of mask pixels held; thread-safe."""

    def __init__(self, max_pixels: int = 32 * 1024 * 1024) -> None:
        self.max_pixels = max_pixels
        self._items: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._pixels = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(geom: BaseGeometry, affine: Affine6, win: Window, all_touched: bool) -> tuple[Any, ...]:
        """The cache key: the AOI's WKB, the grid, the window and the rule."""
        return (shapely.to_wkb(geom), affine, win, all_touched)

    def lookup(self, key: tuple[Any, ...]) -> np.ndarray | None:
        """A cached mask, or None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def store(self, key: tuple[Any, ...], mask: np.ndarray) -> np.ndarray:
        """Keep a new mask (read-only from now on: results share it) unless it is too large to cache."""
        if mask.base is not None:  # a view into a batch's buffer: own it, so the cache holds only this mask
            mask = mask.copy()
        mask.flags.writeable = False
        if mask.size <= self.max_pixels // 4:
            with self._lock:
                if key not in self._items:
                    self._items[key] = mask
                    self._pixels += mask.size
                while self._pixels > self.max_pixels:
                    _, old = self._items.popitem(last=False)
                    self._pixels -= old.size
        return mask


_MASKS = _MaskCache()


@lru_cache(maxsize=64)
def _crs_facts(crs: str | int) -> tuple[bool, tuple[float, float, float, float] | None, str]:
    """(is geographic, area of use (west, south, east, north) or None, a short label) of a CRS."""
    try:
        c = pyproj.CRS.from_user_input(crs_key(crs))
    except (pyproj.exceptions.CRSError, GeometryError):
        return False, None, str(crs)[:40]
    area = c.area_of_use
    auth = c.to_authority()
    label = f"{auth[0]}:{auth[1]}" if auth else (c.name or str(crs)[:40])
    return bool(c.is_geographic), (area.west, area.south, area.east, area.north) if area else None, label


def impossible_coordinates(geom: BaseGeometry, crs: str | int) -> str | None:
    """Why `geom` cannot be in `crs` when that is geographic (|lat| > 90, |lon| > 360), else None."""
    geographic, _area, label = _crs_facts(crs)
    if not geographic:
        return None
    x0, y0, x1, y1 = geom.bounds
    if y0 < -90.0 or y1 > 90.0:
        return (f"the AOI's y values ({y0:.6g} to {y1:.6g}) are not latitudes in {label}: AOIs must be "
                "(x=lon, y=lat); were latitude and longitude swapped, or is the AOI in another CRS "
                "(geometry_crs)?")
    if x0 < -360.0 or x1 > 360.0:
        return (f"the AOI's x values ({x0:.6g} to {x1:.6g}) are not longitudes in {label}; is the AOI in "
                "another CRS (geometry_crs)?")
    return None


def _outside_area(lonlat: BaseGeometry, crs: str) -> str | None:
    """A message when a lon/lat AOI lies wholly outside the area of use of `crs`, else None."""
    _geo, area, label = _crs_facts(crs)
    if area is None:
        return None
    w, s, e, n = area
    x0, y0, x1, y1 = lonlat.bounds
    eps = 1e-6
    lon_ok = w > e or (x0 <= e + eps and w <= x1 + eps)  # an area across the antimeridian: lat decides
    if lon_ok and y0 <= n + eps and s <= y1 + eps:
        return None
    return (f"the AOI (lon {x0:.6g} to {x1:.6g}, lat {y0:.6g} to {y1:.6g}) is outside the area of use of "
            f"{label} (lon {w:g} to {e:g}, lat {s:g} to {n:g})")


def misplaced_aoi(geom: BaseGeometry, geom_crs: str | int | None, raster_crs: str | None,
                  hits: Callable[[BaseGeometry], bool]) -> str | None:
    """Why an AOI that misses a raster is probably in the wrong axis order, else None.

    The sign: the AOI lies where its CRS cannot place it (|lat| > 90 in a geographic CRS) or outside
    the area of use of `raster_crs`, and its x/y-swapped lon/lat version `hits` the raster (the
    (lat, lon) mistake). An AOI merely beside the raster (a join pairing it with a neighbouring
    scene) gives None, as does any AOI the area of use cannot judge (a world-wide CRS such as EPSG:4326
    with valid latitudes).
    """
    if geom_crs is None or raster_crs is None:
        return None
    try:
        why = impossible_coordinates(geom, geom_crs)
        lonlat = geom if why else transform_geometry(geom, geom_crs, "EPSG:4326")
        why = why or _outside_area(lonlat, raster_crs)
        if why is None:
            return None
        swapped = shapely.transform(lonlat, lambda xy: xy[:, ::-1])
        y0, y1 = swapped.bounds[1], swapped.bounds[3]
        if y0 < -90.0 or y1 > 90.0 or not hits(swapped):
            return None
    except (GeometryError, pyproj.exceptions.ProjError, ValueError):
        return None
    return f"{why}; with x and y swapped it overlaps the raster: were latitude and longitude swapped?"


def _as_window(w: tuple[int, int, int, int] | Window) -> Window:
    if isinstance(w, Window):
        return w
    col, row, width, height = (int(v) for v in w)
    return Window(col, row, width, height)


def _chunky(meta: CogMetadata) -> bool:
    return meta.planar_configuration == 1 and meta.samples_per_pixel > 1


def _tile_key(src: BandSource, idx: int) -> _TileKey | None:
    """(url, offset, length) of tile `idx` of a band, or None when the tile is sparse."""
    m = src.meta
    if idx >= len(m.tile_offsets) or idx >= len(m.tile_byte_counts):
        raise RasterduckError(f"tile table has {len(m.tile_offsets)} entries, tile {idx} needed")
    off, cnt = int(m.tile_offsets[idx]), int(m.tile_byte_counts[idx])
    if cnt <= 0 or off <= 0:
        return None
    return (src.url, off, cnt)


def _dest(part: TilePart) -> tuple[slice, slice]:
    h = part.last_row - part.first_row + 1
    w = part.last_col - part.first_col + 1
    return slice(part.window_row, part.window_row + h), slice(part.window_col, part.window_col + w)


def _check_same_grid(req: ReadRequest) -> None:
    first = req.bands[0].meta
    grid = (first.image_width, first.image_height, first.affine, first.crs)
    for src in req.bands[1:]:
        m = src.meta
        if (m.image_width, m.image_height, m.affine, m.crs) != grid:
            raise RasterduckError("requested bands have different grids (resolution or extent); read them "
                                  "separately", record_id=req.record_id, band=src.band)
        if m.dtype != first.dtype:
            raise RasterduckError(f"requested bands have different dtypes ({first.dtype}, {m.dtype}); read "
                                  "them separately", record_id=req.record_id, band=src.band)


@without_gc_step
def plan_jobs(planner: _Planner, requests: Sequence[ReadRequest], budget: int | None = DEFAULT_PIXEL_BUDGET
              ) -> list[_Job | BaseException | None]:
    """Window, masks and fill per request (or None / the error); no I/O, no pixel arrays yet.

    Raises PixelBudgetExceeded when the outputs would exceed `budget` bytes, before anything is allocated.
    """
    jobs: list[_Job | BaseException | None] = []
    planner.move_geometries(requests)
    planner.prepare_windows(requests)
    for i, req in enumerate(requests):
        try:
            jobs.append(planner.job(i, req))
        except Exception as exc:  # ours, or shapely / pyproj errors on odd AOIs
            jobs.append(_wrap(exc, req))
    _check_budget(jobs, budget)
    return jobs


def pack_outputs(jobs: Sequence[_Job | BaseException | None]) -> None:
    """Give the jobs' pixels and valid masks consecutive places in one buffer per dtype (one for the
    masks), in job order: a caller that concatenates every result (the SQL kernel building one Arrow
    column) then takes them as they are, without a copy. The buffers live as long as any result does,
    so only callers that consume the whole batch at once should ask for this."""
    todo = [j for j in jobs if isinstance(j, _Job)]
    counts: dict[str, int] = {}
    for j in todo:
        counts[j.meta.dtype] = counts.get(j.meta.dtype, 0) + len(j.req.bands) * j.window.height * j.window.width
    slabs = {d: np.empty(n, dtype=np.dtype(d)) for d, n in counts.items()}
    masks = np.empty(sum(j.window.height * j.window.width for j in todo), dtype=bool)
    at = dict.fromkeys(counts, 0)
    mat = 0
    for j in todo:
        h, w = j.window.height, j.window.width
        n = len(j.req.bands) * h * w
        start = at[j.meta.dtype]
        j.data_slot = slabs[j.meta.dtype][start:start + n].reshape(len(j.req.bands), h, w)
        at[j.meta.dtype] = start + n
        j.valid_slot = masks[mat:mat + h * w].reshape(h, w)
        mat += h * w


def file_groups(jobs: Sequence[_Job | BaseException | None]) -> list[list[_Job]]:
    """The jobs split into groups that share no file (connected through the URLs they read), in order of
    first appearance: a group's tiles are complete once its jobs are allocated, so its fetch can start
    while later groups are still being planned."""
    parent: dict[str, str] = {}

    def root(u: str) -> str:
        while parent[u] != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    firsts: list[tuple[_Job, str]] = []
    seen: dict[int, str] = {}  # band lists already joined (a record's list is shared by all its AOIs' jobs)
    for j in jobs:
        if not isinstance(j, _Job):
            continue
        first = seen.get(id(j.req.bands))
        if first is None:
            urls = [s.url for s in j.req.bands] + [s.alpha.url for s in j.req.bands if s.alpha is not None]
            for u in urls:
                parent.setdefault(u, u)
            top = root(urls[0])
            for u in urls[1:]:
                other = root(u)
                if other != top:
                    parent[other] = top
            first = seen[id(j.req.bands)] = urls[0]
        firsts.append((j, first))
    groups: dict[str, list[_Job]] = {}
    for j, u in firsts:
        groups.setdefault(root(u), []).append(j)
    return list(groups.values())


@without_gc_step
def allocate_group(planner: _Planner, group: Sequence[_Job]) -> dict[_TileKey, _Tile]:
    """Create the arrays of a group's jobs and return the tiles they need (a job that cannot be
    allocated keeps the error)."""
    for j in group:
        try:
            planner.allocate(j)
        except RasterduckError as exc:
            j.error = exc.with_context(record_id=j.req.record_id, url=j.req.bands[0].url)
    return planner.take_tiles()


@without_gc_step
def rasterize_aois(jobs: Sequence[_Job | BaseException | None]) -> None:
    """Rasterise every job's AOI mask (CPU work the caller overlaps with fetching: masks are needed only
    when the results are finished). Each distinct (AOI, grid, window) is rasterised once, all of a batch's
    new ones in one vectorised call; a job whose mask fails keeps the error."""
    todo = [j for j in jobs if isinstance(j, _Job) and j.error is None and j.geom is not None and j.aoi is None]
    groups: dict[tuple[Any, ...], list[_Job]] = {}
    for j in todo:
        groups.setdefault((id(j.geom), j.meta.affine, j.window, j.req.all_touched), []).append(j)
    missing: dict[bool, list[tuple[tuple[Any, ...], list[_Job]]]] = {}
    firsts = np.empty(len(groups), dtype=object)
    firsts[:] = [members[0].geom for members in groups.values()]
    try:  # the cache keys' WKB in one call (per geometry it was a tenth of a 100k-row stream's planning)
        wkbs: list[bytes] | None = shapely.to_wkb(firsts).tolist()
    except Exception:  # an odd AOI: key them one by one so only its pairs fail
        wkbs = None
    for k, members in enumerate(groups.values()):
        first = members[0]
        assert first.geom is not None
        try:
            key = (_MaskCache.key(first.geom, first.meta.affine, first.window, first.req.all_touched)
                   if wkbs is None else (wkbs[k], first.meta.affine, first.window, first.req.all_touched))
        except Exception as exc:  # shapely surprises on odd AOIs: those pairs fail, not the batch
            for j in members:
                j.error = exc
            continue
        hit = _MASKS.lookup(key)
        if hit is not None:
            for j in members:
                j.aoi = hit
        else:
            missing.setdefault(first.req.all_touched, []).append((key, members))
    for all_touched, entries in missing.items():
        items = [(m[0].geom, m[0].window.shape, window_transform(m[0].meta.affine, m[0].window.col_off,
                                                                  m[0].window.row_off)) for _k, m in entries]
        masks: list[np.ndarray | None]
        try:
            masks = list(geometry_masks(items, all_touched=all_touched))
        except Exception:  # one bad AOI: rasterise one by one so only its pairs fail
            masks = []
            for (_key, members), (geom, shape, wt) in zip(entries, items, strict=True):
                try:
                    masks.append(geometry_mask(geom, shape, wt, all_touched=all_touched))
                except Exception as exc:
                    masks.append(None)
                    for j in members:
                        j.error = exc
        for (key, members), mask in zip(entries, masks, strict=True):
            if mask is None:
                continue
            kept = _MASKS.store(key, mask)
            for j in members:
                j.aoi = kept


def _check_budget(jobs: Sequence[_Job | BaseException | None], budget: int | None) -> None:
    if budget is None:
        return
    sizes: dict[str, int] = {}
    total = 0
    for j in jobs:
        if isinstance(j, _Job):
            size = sizes.get(j.meta.dtype)
            if size is None:
                size = sizes[j.meta.dtype] = np.dtype(j.meta.dtype).itemsize
            total += len(j.req.bands) * j.window.width * j.window.height * size
    if total > budget:
        raise PixelBudgetExceeded(
            f"this call would read {total / 1e6:.1f} MB of pixels, over the budget of {budget / 1e6:.1f} MB; "
            "raise pixel_budget or send fewer/smaller AOIs per call"
        )


# ---------------------------------------------------------------------------------------------------
# fetch, decode, scatter


def _coalesce_params(backend: Any) -> tuple[int, int]:
    """The backend's coalescing gap and size (DefaultBackend keeps them on its HTTP backend)."""
    for obj in (backend, getattr(backend, "http", None)):
        gap, size = getattr(obj, "max_gap", None), getattr(obj, "max_size", None)
        if isinstance(gap, int) and isinstance(size, int):
            return gap, size
    return DEFAULT_MAX_GAP, DEFAULT_MAX_SIZE


def fetch_groups(tiles: Sequence[_Tile], backend: Any) -> list[tuple[str, list[_Tile]]]:
    """Tiles grouped per URL into the coalesced ranges the backend will turn into single requests.

    A tile followed (within the coalescing gap) by another needed tile of its file is fetched whole: its
    prefix would only split one request in two. Prefixes stay on the tiles that end a run."""
    gap, size = _coalesce_params(backend)
    by_url: dict[str, list[_Tile]] = defaultdict(list)
    for t in tiles:
        by_url[t.url].append(t)
    groups: list[tuple[str, list[_Tile]]] = []
    for url, ts in by_url.items():
        ordered = sorted(ts, key=lambda t: t.offset)
        for t, after in pairwise(ordered):
            if after.offset - (t.offset + t.length) <= gap:
                t.fetch_length = t.length
        merged = coalesce([(t.offset, t.fetch_length or t.length) for t in ts], gap, size)
        for m in merged:
            groups.append((url, [ts[i] for i, _off in m.parts]))
    return groups


async def fetch_and_decode(tiles: dict[_TileKey, _Tile], backend: Any, stats: ReadStats | None = None) -> None:
    """Fetch every tile (coalesced groups, all at once) and decode + scatter each as its bytes arrive."""
    loop = asyncio.get_running_loop()
    pool = decode_pool()
    st = stats if stats is not None else ReadStats()

    async def fetch(url: str, group: list[_Tile], ranges: list[tuple[int, int]]) -> Sequence[Any] | None:
        t0 = time.perf_counter()
        try:
            datas = await backend.read_ranges(url, ranges)
        except Exception as exc:  # a custom backend may raise anything: name the URL all the same
            err = (exc.with_context(url=url) if isinstance(exc, RasterduckError)
                   else FetchError(f"{type(exc).__name__}: {exc}", url=url))
            if err is not exc:
                err.__cause__ = exc
            for t in group:
                t.error = err
            return None
        st.add(fetch_calls=1, bytes_fetched=sum(n for _o, n in ranges), fetch_seconds=time.perf_counter() - t0)
        return datas

    async def one(url: str, group: list[_Tile]) -> None:
        lengths = [t.fetch_length or t.length for t in group]
        st.add(prefix_tiles=sum(1 for t, n in zip(group, lengths, strict=True) if n < t.length))
        datas = await fetch(url, group, [(t.offset, n) for t, n in zip(group, lengths, strict=True)])
        if datas is None:
            return
        done = await asyncio.gather(*(loop.run_in_executor(pool, _decode_scatter, t, d, st)
                                      for t, d in zip(group, datas, strict=True)))
        short = [(t, d) for t, d, ok in zip(group, datas, done, strict=True) if not ok]
        if not short:
            return
        # prefixes that fell short: fetch the rest of those tiles (one call, coalesced) and decode again
        st.add(prefix_refetches=len(short))
        rests = await fetch(url, [t for t, _d in short],
                            [(t.offset + len(d), t.length - len(d)) for t, d in short])
        if rests is not None:
            await asyncio.gather(*(loop.run_in_executor(pool, _decode_whole, t, d, r, st)
                                   for (t, d), r in zip(short, rests, strict=True)))

    await asyncio.gather(*(one(u, g) for u, g in fetch_groups(list(tiles.values()), backend)))


def _decode_whole(tile: _Tile, prefix: Any, rest: Any, stats: ReadStats) -> None:
    """Decode a tile from its prefix and the rest fetched after the prefix fell short."""
    _decode_scatter(tile, b"".join((prefix, rest)), stats)


def _decode_scatter(tile: _Tile, data: Any, stats: ReadStats) -> bool:
    """Decode one tile (its needed rows only) and copy its parts into every job that uses it. False when
    `data` is a prefix of the tile that ends before the needed rows (the caller fetches the rest)."""
    t0 = time.perf_counter()
    try:
        expected = tile.length if len(data) >= tile.length else (tile.fetch_length or tile.length)
        if len(data) != expected:
            raise RasterduckError(f"backend returned {len(data)} bytes for a {expected}-byte range of a "
                                  f"{tile.length}-byte tile", url=tile.url)
        first_row = 0
        if tile.fmt is None:
            tw, th = tile.mask_size
            arr = decode_mask_tile(data, tw, th, tile.rows)[:, :, None]
        else:
            # only the rows and leading columns the uses read get their predictor undone
            parts = [use.part for use in tile.uses]
            first_row = min(p.first_row for p in parts)
            arr = decode_tile(data, tile.fmt, tile.rows, first_row=first_row,
                              cols=max(p.last_col for p in parts) + 1)
        stats.add(decoded=1, decode_seconds=time.perf_counter() - t0, decoded_rows=tile.rows,
                  tile_rows=tile.fmt.tile_height if tile.fmt is not None else tile.mask_size[1])
        for use in tile.uses:
            _scatter(use, arr, first_row)
    except TruncatedTileError as exc:
        if len(data) < tile.length:
            return False
        tile.error = exc.with_context(url=tile.url)
    except RasterduckError as exc:
        tile.error = exc.with_context(url=tile.url)
    except Exception as exc:  # imagecodecs / NumPy surprises on corrupt data: still name the tile
        err = DecodeError(f"tile at byte {tile.offset} ({tile.length} bytes): {type(exc).__name__}: {exc}",
                          url=tile.url)
        err.__cause__ = exc
        tile.error = err
    return True


def _scatter(use: _Use, arr: np.ndarray, first_row: int) -> None:
    """Copy the part of a decoded tile a use reads (`arr` starts at tile row `first_row`) into its job."""
    p = use.part
    block = arr[p.first_row - first_row : p.last_row + 1 - first_row, p.first_col : p.last_col + 1]
    ys, xs = _dest(p)
    job = use.job
    for slot, sample in use.targets:
        job.data[slot, ys, xs] = block[:, :, sample]
    if use.mask is not None:  # internal-mask bits (sample 0 of a mask tile) or an alpha sample
        use.mask.valid[ys, xs] = block[:, :, use.alpha or 0] != 0


# ---------------------------------------------------------------------------------------------------
# finish


def _finish(job: _Job) -> ReadResult:
    """Apply the AOI mask and GDAL's mask band, fill, and compute the valid mask."""
    data = job.data
    h, w = job.window.shape
    keep: np.ndarray | None = job.aoi
    if keep is not None:
        np.copyto(data, job.fill, where=~keep[None, :, :])
    valid = job.valid_slot if job.valid_slot is not None else np.empty((h, w), dtype=bool)
    if keep is None:
        valid.fill(True)
    else:
        np.copyto(valid, keep)
    for m in job.masks:
        if not job.raw:
            hole = ~m.valid
            for slot in m.slots:
                np.copyto(data[slot], job.fill, where=hole)
        valid &= m.valid
    if job.missing is not None:
        valid &= ~job.missing
    nodata = job.meta.nodata
    if nodata is not None:
        valid &= nodata_valid(data, nodata)
    meta = job.meta
    transform = window_transform(meta.affine, job.window.col_off, job.window.row_off)
    fill = job.fill.item()
    return ReadResult(job.req.record_id, [b.band for b in job.req.bands], data, valid, transform, meta.crs,
                      fill, _dtype_name(data.dtype), job.window, meta.affine, job.req.geometry_index)


_DTYPE_NAMES: dict[np.dtype[Any], str] = {}


def _dtype_name(dtype: np.dtype[Any]) -> str:
    """str(dtype), remembered: NumPy builds the name anew each time (~5 us, a fifth of finishing a small result)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


def _wrap(exc: BaseException, req: ReadRequest) -> BaseException:
    """The error of one pair, naming its record, band(s) and URL, with the pair's `geometry_index`. A
    tile's error is shared by every pair that needs the tile (maybe of other records): each gets a copy."""
    if not isinstance(exc, RasterduckError):
        url = req.bands[0].url if req.bands else None
        new = RasterduckError(f"{type(exc).__name__}: {exc}", record_id=req.record_id, url=url)
        new.geometry_index = req.geometry_index  # type: ignore[attr-defined]
        return new
    own = copy.copy(exc)
    own.geometry_index = req.geometry_index  # type: ignore[attr-defined]  # which AOI, like ReadResult
    own.__cause__, own.__traceback__ = exc.__cause__, exc.__traceback__
    if own.band is None and req.bands:
        named = [s.band for s in req.bands if own.url is not None and s.url == own.url]
        if not named and len(req.bands) == 1:
            named = [req.bands[0].band]
        if named:
            own.with_context(band=",".join(dict.fromkeys(named)))
    return own.with_context(record_id=req.record_id, url=req.bands[0].url if req.bands else None)


async def read_batch(requests: Sequence[ReadRequest], backend: Any, *, pixel_budget: int | None = DEFAULT_PIXEL_BUDGET,
                     stats: ReadStats | None = None, packed: bool = False) -> list[ReadResult | BaseException | None]:
    """Read a batch of pairs; per pair a ReadResult, None (the AOI misses the raster) or the error.

    Raises only PixelBudgetExceeded (before any I/O); every other failure is returned in its pair's slot.
    `packed`: the results' arrays are consecutive views of shared buffers (see pack_outputs).
    """
    loop = asyncio.get_running_loop()
    pool = decode_pool()
    st = stats if stats is not None else ReadStats()
    planner = _Planner()
    # planning and finishing are CPU work (masks, fills): off the event loop, which may serve other calls

    def plan() -> list[_Job | BaseException | None]:
        planned = plan_jobs(planner, requests, pixel_budget)
        if packed:
            pack_outputs(planned)
        return planned

    jobs = await loop.run_in_executor(pool, plan)
    masks = loop.run_in_executor(pool, rasterize_aois, jobs)  # needed only at finish; alongside the allocation
    tiles: dict[_TileKey, _Tile] = {}
    fetches: list[asyncio.Task[None]] = []
    stopped = threading.Event()  # cancelled or failed: no new fetches

    def start(group_tiles: dict[_TileKey, _Tile]) -> None:  # on the loop
        tiles.update(group_tiles)
        if not stopped.is_set():
            fetches.append(loop.create_task(fetch_and_decode(group_tiles, backend, st)))

    def allocate_all() -> None:  # a file group's fetch starts as soon as its arrays and tiles exist
        for group in file_groups(jobs):
            if stopped.is_set():
                return
            loop.call_soon_threadsafe(start, allocate_group(planner, group))
            # give up the interpreter lock so the loop starts this group's requests now, not when the
            # switch interval (5 ms) takes the lock from this thread (S1 -1 to -7 ms, S2 0 to -15 ms)
            time.sleep(0)

    try:
        await loop.run_in_executor(pool, allocate_all)  # the start() calls it queued have run (FIFO)
        await asyncio.gather(*fetches)
    finally:
        stopped.set()
        for f in fetches:
            f.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        await masks
    st.add(tiles=len(tiles), sparse_tiles=planner.sparse,
           mask_tiles=sum(1 for t in tiles.values() if t.fmt is None))
    for t in tiles.values():
        if t.error is not None:
            for use in t.uses:
                if use.job.error is None:
                    use.job.error = t.error
    out = await loop.run_in_executor(pool, _finish_all, jobs)
    st.add(results=sum(1 for r in out if isinstance(r, ReadResult)))
    return out


@without_gc_step
def _finish_all(jobs: Sequence[_Job | BaseException | None]) -> list[ReadResult | BaseException | None]:
    out: list[ReadResult | BaseException | None] = []
    for j in jobs:
        if not isinstance(j, _Job):
            out.append(j)
        elif j.error is not None:
            out.append(_wrap(j.error, j.req))
        else:
            out.append(_finish(j))
    return out


def band_sources(accessor: Any, bands: Sequence[str]) -> list[BandSource]:
    """Resolve band codes of a RasterAccessor into sources; unknown bands raise BandNotFoundError."""
    out = []
    for b in bands:
        meta, url, idx = accessor.try_get_band_cog_metadata(b)
        if meta is None or url is None:
            raise BandNotFoundError(f"band {b!r} not found (assets: {sorted(accessor.info.assets)})",
                                    record_id=accessor.id, band=b)
        src = BandSource(b, meta, url, idx or 0)
        if mask_kind(meta, src.band_index) is MaskKind.ALPHA and not _chunky(meta):
            src = BandSource(b, meta, url, src.band_index, _alpha_source(accessor, url, meta))
        out.append(src)
    return out


def _alpha_source(accessor: Any, url: str, meta: CogMetadata) -> BandSource | None:
    """The record's band holding the alpha plane of `url` (planar files), if the record has it."""
    alpha = alpha_sample(meta)
    from .accessor import resolve_href

    for key, asset in accessor.info.assets.items():
        if not asset or resolve_href(asset) != url or int(asset.get("band_index") or 0) != alpha:
            continue
        m, u, idx = accessor.try_get_band_cog_metadata(key)
        if m is not None and u == url and (idx or 0) == alpha:
            return BandSource(key, m, u, alpha or 0)
    return None
