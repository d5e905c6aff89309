"""Warp read results onto one grid in a target CRS, shared by every result of a call.

The grid: square pixels of the finest source resolution (each source's pixel steps measured in the
target CRS at its window's centre), aligned to that resolution (origin at multiples of it, like
`gdalwarp -tap`), so every warped result is an integer block of the same grid. All results of one AOI
(one `geometry_index`, e.g. a time series) get the same block, covering the union of their footprints;
results of different AOIs get different blocks of the same grid, so they never allocate the whole union.

Resampling follows GDAL's warper: each destination pixel centre is moved into the source (destination
geotransform, PROJ, inverse source geotransform in GDAL's arithmetic, no approximation); `nearest` takes
the pixel under it (`int(x + 1e-10)`, GDAL's rule), `bilinear` (float data) weighs the four pixels
around it and renormalises the weights over the valid ones. Invalid source pixels (outside the AOI or
the data, nodata) never contribute; the dtype is kept.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import GeometryError, RasterduckError
from .geobox import Affine6, apply, apply_gdal, gdal_inverse
from .geometry import CrsLike, crs_key, get_transformer
from .read import ReadResult
from .window import Window

RESAMPLING = ("nearest", "bilinear")
_EDGE_POINTS = 21  # points per window edge when its outline is moved to the target CRS
_SNAP = 1e-9  # grid-line tolerance (in pixels) when a footprint bound is turned into a pixel index


@dataclass(frozen=True)
class TargetGrid:
    """A grid in `crs` with square `resolution` pixels whose lines run through multiples of it."""

    crs: str
    resolution: float

    @property
    def transform(self) -> Affine6:
        """The grid's transform: pixel (0, 0) has its top-left corner at the CRS origin."""
        r = self.resolution
        return (r, 0.0, 0.0, 0.0, -r, 0.0)

    def window_for(self, bounds: tuple[float, float, float, float]) -> Window:
        """The smallest block of the grid covering `bounds` (minx, miny, maxx, maxy)."""
        r = self.resolution
        minx, miny, maxx, maxy = bounds
        col0 = math.floor(minx / r + _SNAP)
        col1 = max(math.ceil(maxx / r - _SNAP), col0 + 1)
        row0 = math.floor(-maxy / r + _SNAP)
        row1 = max(math.ceil(-miny / r - _SNAP), row0 + 1)
        return Window(col0, row0, col1 - col0, row1 - row0)

    def window_transform(self, w: Window) -> Affine6:
        """Transform of a block of the grid."""
        r = self.resolution
        return (r, 0.0, w.col_off * r, 0.0, -r, -(w.row_off * r))


def _outline(r: ReadResult) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates (source CRS) of points along the result's window edges."""
    h, w = r.height, r.width
    t = np.linspace(0.0, 1.0, _EDGE_POINTS)
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    return apply(r.transform, cols, rows)


def _moved(r: ReadResult, target: str, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if r.crs is None:
        raise GeometryError("a result without a CRS cannot be warped", record_id=r.record_id)
    tr = get_transformer(r.crs, target)
    if tr is None:
        return xs, ys
    ox, oy = tr.transform(xs, ys)
    return np.asarray(ox, dtype=float), np.asarray(oy, dtype=float)


def footprint_bounds(r: ReadResult, target_crs: CrsLike) -> tuple[float, float, float, float]:
    """Bounds in `target_crs` of the result's window outline (edges densified before moving)."""
    xs, ys = _moved(r, crs_key(target_crs), *_outline(r))
    ok = np.isfinite(xs) & np.isfinite(ys)
    if not ok.any():
        raise GeometryError(f"the result's footprint cannot be expressed in {crs_key(target_crs)}",
                            record_id=r.record_id)
    return float(xs[ok].min()), float(ys[ok].min()), float(xs[ok].max()), float(ys[ok].max())


def source_resolution(r: ReadResult, target_crs: CrsLike) -> float:
    """The shorter of the result's pixel steps, measured in `target_crs` at the window's centre."""
    cx, cy = r.width / 2.0, r.height / 2.0
    cols = np.array([cx, cx + 1.0, cx])
    rows = np.array([cy, cy, cy + 1.0])
    xs, ys = _moved(r, crs_key(target_crs), *apply(r.transform, cols, rows))
    steps = [math.hypot(xs[i] - xs[0], ys[i] - ys[0]) for i in (1, 2)]
    good = [s for s in steps if math.isfinite(s) and s > 0]
    if not good:
        raise GeometryError("cannot measure the result's resolution in the target CRS", record_id=r.record_id)
    return min(good)


def target_grid(results: Sequence[ReadResult], target_crs: CrsLike, resolution: float | None = None) -> TargetGrid:
    """The shared grid of a call: `resolution`, else the finest source's, in `target_crs`."""
    key = crs_key(target_crs)
    if resolution is None:
        if not results:
            raise RasterduckError("no results to derive a target resolution from")
        resolution = min(source_resolution(r, key) for r in results)
    if not (math.isfinite(resolution) and resolution > 0):
        raise ValueError(f"resolution must be a positive number, got {resolution}")
    return TargetGrid(key, float(resolution))


def warp_results(results: Sequence[ReadResult | BaseException | None], target_crs: CrsLike, *,
                 resampling: str = "nearest", resolution: float | None = None
                 ) -> list[ReadResult | BaseException | None]:
    """Every ReadResult warped onto one shared grid in `target_crs`; None and errors pass through.

    Results with the same `geometry_index` (None counts as one group) share one block of the grid.
    """
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
    good = [r for r in results if isinstance(r, ReadResult)]
    if not good:
        return list(results)
    grid = target_grid(good, target_crs, resolution)
    groups: dict[int | None, list[tuple[float, float, float, float]]] = defaultdict(list)
    bounds: dict[int, tuple[float, float, float, float]] = {}
    for r in good:
        b = footprint_bounds(r, grid.crs)
        bounds[id(r)] = b
        groups[r.geometry_index].append(b)
    windows = {g: grid.window_for((min(b[0] for b in bs), min(b[1] for b in bs), max(b[2] for b in bs),
                                   max(b[3] for b in bs))) for g, bs in groups.items()}
    out: list[ReadResult | BaseException | None] = []
    for item in results:
        if isinstance(item, ReadResult):
            out.append(warp_result(item, grid, windows[item.geometry_index], resampling, bounds[id(item)]))
        else:
            out.append(item)
    return out


def warp_result(r: ReadResult, grid: TargetGrid, window: Window, resampling: str = "nearest",
                bounds: tuple[float, float, float, float] | None = None) -> ReadResult:
    """One result resampled onto `window` of `grid` (pixels its footprint does not reach stay fill)."""
    nb = r.data.shape[0]
    dtype = r.data.dtype
    if resampling == "bilinear" and dtype.kind != "f":
        raise ValueError(f"bilinear resampling needs float data, got {dtype}; use nearest")
    fill = np.asarray(r.nodata).astype(dtype) if dtype.kind == "f" or _fits(r.nodata, dtype) else dtype.type(0)
    data = np.empty((nb, window.height, window.width), dtype=dtype)
    data[...] = fill
    valid = np.zeros((window.height, window.width), dtype=bool)
    sub = _reach(grid, window, bounds if bounds is not None else footprint_bounds(r, grid.crs))
    if sub is not None:
        r0, r1, c0, c1 = sub
        wt = grid.window_transform(window)
        cols = np.arange(c0, c1, dtype=float) + 0.5
        rows = np.arange(r0, r1, dtype=float) + 0.5
        gx, gy = np.meshgrid(cols, rows)
        xs, ys = apply_gdal(wt, gx.ravel(), gy.ravel())
        if r.crs is None:
            raise GeometryError("a result without a CRS cannot be warped", record_id=r.record_id)
        back = get_transformer(grid.crs, r.crs)
        if back is not None:
            xs, ys = (np.asarray(v, dtype=float) for v in back.transform(xs, ys))
        px, py = apply_gdal(gdal_inverse(r.transform), xs, ys)
        shape = (r1 - r0, c1 - c0)
        if resampling == "nearest":
            vals, ok = _nearest(r, px, py)
        else:
            vals, ok = _bilinear(r, px, py)
        block = data[:, r0:r1, c0:c1]
        ok2 = ok.reshape(shape)
        for b in range(nb):
            np.copyto(block[b], vals[b].reshape(shape), where=ok2)
        valid[r0:r1, c0:c1] = ok2
    return ReadResult(r.record_id, list(r.bands), data, valid, grid.window_transform(window), grid.crs,
                      fill.item(), str(dtype), window, grid.transform, r.geometry_index)


def _fits(v: float | int, dtype: np.dtype) -> bool:
    info = np.iinfo(dtype)
    return float(v) == int(v) and info.min <= v <= info.max


def _reach(grid: TargetGrid, window: Window, bounds: tuple[float, float, float, float]
           ) -> tuple[int, int, int, int] | None:
    """Rows and columns (r0, r1, c0, c1) of `window` that the footprint `bounds` can reach."""
    own = grid.window_for(bounds)
    c0 = max(own.col_off, window.col_off) - window.col_off
    c1 = min(own.col_stop, window.col_stop) - window.col_off
    r0 = max(own.row_off, window.row_off) - window.row_off
    r1 = min(own.row_stop, window.row_stop) - window.row_off
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, r1, c0, c1


def _inside(r: ReadResult, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """GDAL's test that a source position is on the source (with its 1e-10 slack on the far side)."""
    with np.errstate(invalid="ignore"):
        return (px >= 0) & (py >= 0) & (px + 1e-10 <= r.width) & (py + 1e-10 <= r.height)


def _nearest(r: ReadResult, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = _inside(r, px, py)
    ix = np.zeros(px.shape, dtype=np.intp)
    iy = np.zeros(py.shape, dtype=np.intp)
    ix[ok] = np.minimum((px[ok] + 1e-10).astype(np.intp), r.width - 1)
    iy[ok] = np.minimum((py[ok] + 1e-10).astype(np.intp), r.height - 1)
    ok &= r.valid[iy, ix]
    return r.data[:, iy, ix], ok


def _bilinear(r: ReadResult, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inside = _inside(r, px, py)
    fx = np.where(inside, px, 0.5) - 0.5
    fy = np.where(inside, py, 0.5) - 0.5
    x0 = np.floor(fx).astype(np.intp)
    y0 = np.floor(fy).astype(np.intp)
    tx, ty = fx - x0, fy - y0
    nb = r.data.shape[0]
    acc = np.zeros((nb, px.size), dtype=np.float64)
    wsum = np.zeros(px.size, dtype=np.float64)
    for dy, wy in ((0, 1.0 - ty), (1, ty)):
        for dx, wx in ((0, 1.0 - tx), (1, tx)):
            xi, yi = x0 + dx, y0 + dy
            ok = inside & (xi >= 0) & (yi >= 0) & (xi < r.width) & (yi < r.height)
            xi = np.where(ok, xi, 0)
            yi = np.where(ok, yi, 0)
            ok &= r.valid[yi, xi]
            w = np.where(ok, wx * wy, 0.0)
            vals = r.data[:, yi, xi].astype(np.float64)
            acc += np.where(ok, vals * w, 0.0)
            wsum += w
    ok = inside & (wsum >= 1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = acc / np.where(ok, wsum, 1.0)
    return out.astype(r.data.dtype), ok
