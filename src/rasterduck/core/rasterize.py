"""AOI masks with GDAL's rasterisation rules, in NumPy (what `rasterio.features.geometry_mask` returns).

GDAL (`GDALRasterizeGeometries`, as rasterio calls it) burns each polygon of a MultiPolygon or
GeometryCollection on its own (the union of the parts), after it has
  1. turned every ring clockwise in world coordinates (`OGRLinearRing::isClockwise`),
  2. moved every vertex to pixel/line space with `GDALInvGeoTransform` of the grid transform,
  3. filled scanlines at pixel-centre height `row + 0.5`: an edge counts on a scanline when
     `y_top <= row + 0.5 < y_bottom`, its crossing x is rounded to a pixel boundary with
     `floor(x + 0.5)`, and columns between successive crossings are burned (even-odd rule, so a centre
     exactly on a left edge is outside and one exactly on a right edge is inside); a horizontal edge
     lying exactly on a centre row is burned on its own only when it runs right to left,
  4. with ALL_TOUCHED, also walked every ring edge through the grid, burning each cell it enters.
The fill is vectorised over (edge, row) pairs. The ALL_TOUCHED walk is vectorised over the grid lines
each edge crosses; edges passing within rounding distance of a cell corner are walked step by step
with GDAL's own arithmetic, since only that arithmetic decides which cells they burn.
`geometry_masks` does the same for many (geometry, window) items at once: the polygon fill of all
items runs through one set of array operations and burns one flat buffer, which removes the
per-call overhead that dominates field-sized AOIs; other items go through `geometry_mask`.
Points and lines follow GDAL too: a point burns the cell under it, a line is drawn with Bresenham's
algorithm (or the cell walk with `all_touched`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import GeometryError
from .geobox import Affine6, apply_gdal, as_affine6, gdal_inverse

# OGR's tolerance when it checks the neighbours of the pivot vertex in isClockwise (world units).
_ORIENTATION_EPS = 1e-5
# GDAL's ALL_TOUCHED walk: edges closer than this to an axis are drawn as one column or row.
_AXIS_EPS = 0.01
# GDAL's ALL_TOUCHED walk: ends this close to a cell boundary count as lying on it.
_INTERSECT_EPS = 1e-4
# GDAL's ALL_TOUCHED walk: smallest step across a row boundary.
_MIN_ROW_STEP = 1e-9
# Above this width, spans are burned one slice at a time rather than as whole-row comparisons.
_WIDE = 512
# Up to this many spans (a field-sized AOI), slice assignments beat the vectorised row comparisons.
_FEW_SPANS = 96
# Windows up to this many pixels join the batched fill of `geometry_masks`; larger ones go alone.
_BATCH_MAX_PIXELS = 1 << 16
# Pixels of one batched fill's flat buffer (its marks take eight bytes a pixel).
_CHUNK_PIXELS = 1 << 20
_INT_MIN = float(-(2**31))
_INT_MAX = float(2**31 - 1)


def geometry_mask(
    geom: BaseGeometry,
    out_shape: tuple[int, int],
    transform: Iterable[float],
    all_touched: bool = False,
) -> np.ndarray:
    """Boolean (height, width) mask, True where GDAL would burn `geom` (rasterio's `invert=True`).

    `geom` is in the grid's CRS; `transform` maps (col, row) to world coordinates.
    """
    height, width = (int(v) for v in out_shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"out_shape must be positive, got {out_shape}")
    if not isinstance(geom, BaseGeometry):
        raise GeometryError(f"expected a shapely geometry, got {type(geom).__name__}")
    try:
        inv = gdal_inverse(as_affine6(transform))
    except ValueError as exc:
        raise GeometryError(str(exc)) from exc
    burner = _Burner(height, width)
    polygons: list[BaseGeometry] = []
    for part in _flatten(geom):
        kind = part.geom_type
        if kind == "Polygon":
            polygons.append(part)
        elif kind == "Point":
            _burn_point(burner, part, inv)
        elif kind in ("LineString", "LinearRing"):
            _burn_line(burner, part, inv, all_touched)
        else:  # pragma: no cover - _flatten only yields the kinds above
            raise GeometryError(f"cannot rasterise a {kind}")
    if polygons:
        _burn_polygons(burner, polygons, inv, all_touched)
    return burner.result()


def geometry_masks(
    items: Iterable[tuple[BaseGeometry, tuple[int, int], Iterable[float]]],
    all_touched: bool = False,
) -> list[np.ndarray]:
    """`geometry_mask` of every (geom, out_shape, transform) item, computed together to save per-call cost.

    Polygons and MultiPolygons on small windows are filled in one set of array operations over all
    items; anything else goes through `geometry_mask` on its own. Errors are those of `geometry_mask`
    (which failing item raises first, when several would, is not specified).
    """
    items = list(items)
    out: list[np.ndarray | None] = [None] * len(items)
    chunk: list[tuple[int, BaseGeometry, int, int, Affine6]] = []
    pixels = 0
    for i, (geom, out_shape, transform) in enumerate(items):
        fast = _batchable(geom, out_shape, transform)
        if fast is None:
            out[i] = geometry_mask(geom, out_shape, transform, all_touched)
            continue
        h, w, inv = fast
        if pixels + h * w > _CHUNK_PIXELS:
            _fill_chunk(chunk, all_touched, out, items)
            chunk, pixels = [], 0
        chunk.append((i, geom, h, w, inv))
        pixels += h * w
    if chunk:
        _fill_chunk(chunk, all_touched, out, items)
    return cast(list[np.ndarray], out)


def _batchable(geom: object, out_shape: object, transform: object) -> tuple[int, int, Affine6] | None:
    """(height, width, GDAL inverse) when the item can join the batched fill, else None."""
    if not isinstance(geom, (shapely.Polygon, shapely.MultiPolygon)):
        return None
    try:
        height, width = (int(v) for v in out_shape)  # type: ignore[attr-defined]
        inv = gdal_inverse(as_affine6(transform))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if height <= 0 or width <= 0 or height * width > _BATCH_MAX_PIXELS:
        return None
    return height, width, inv


def _fill_chunk(
    chunk: list[tuple[int, BaseGeometry, int, int, Affine6]],
    all_touched: bool,
    out: list[np.ndarray | None],
    items: list[tuple[BaseGeometry, tuple[int, int], Iterable[float]]],
) -> None:
    """Masks of a chunk of batchable items into `out`: all items' spans burned into one flat buffer."""
    n = len(chunk)
    if n < 2:  # a batch of one costs more than the plain call
        return _one_by_one(chunk, all_touched, out, items)
    geoms = np.empty(n, dtype=object)
    geoms[:] = [c[1] for c in chunk]
    hs = np.array([c[2] for c in chunk], dtype=np.int64)
    ws = np.array([c[3] for c in chunk], dtype=np.int64)
    invs = np.array([c[4] for c in chunk], dtype=np.float64).reshape(n, 6)
    polys, item_of_poly = shapely.get_parts(geoms, return_index=True)
    # Row ids of each polygon's scanlines, back to back: crossings pair up per polygon and row.
    poly_h = hs[item_of_poly]
    row_base = np.zeros(len(polys) + 1, dtype=np.int64)
    np.cumsum(poly_h, out=row_base[1:])
    if not len(polys) or row_base[-1] >= 2**31:  # nothing to fill, or more rows than the sort key holds
        return _one_by_one(chunk, all_touched, out, items)
    coords, ring_off, poly_of_ring = _polygon_rings(polys)
    item_of_ring = item_of_poly[poly_of_ring]
    item_of_vertex = np.repeat(item_of_ring, np.diff(ring_off))
    per_vertex = invs[item_of_vertex]
    try:
        wx, wy, px, py = _pixel_coords(coords, tuple(per_vertex.T))
    except GeometryError:  # some item is not finite: let geometry_mask say which
        return _one_by_one(chunk, all_touched, out, items)
    x1, y1, x2, y2, edge_ring = _ring_edges(px, py, ring_off)
    edge_poly = poly_of_ring[edge_ring]
    edge_item = item_of_poly[edge_poly]
    group, left, right = _fill_spans(x1, y1, x2, y2, row_base[edge_poly], poly_h[edge_poly])
    span_poly = np.searchsorted(row_base, group, side="right") - 1
    span_item = item_of_poly[span_poly]
    span_row = group - row_base[span_poly]
    flat = y1 == y2
    if flat.any():
        e_item = edge_item[flat]
        found = _horizontal_spans(wx, wy, ring_off, x1[flat], x2[flat], y1[flat], edge_ring[flat],
                                  hs[e_item], ws[e_item])
        if found is not None:
            span_item = np.concatenate([span_item, e_item[found[0]]])
            span_row = np.concatenate([span_row, found[1]])
            left = np.concatenate([left, found[2]])
            right = np.concatenate([right, found[3]])
    # Every item's mask back to back in one flat buffer.
    sizes = hs * ws
    pix_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=pix_off[1:])
    total = int(pix_off[-1])
    span_w = ws[span_item]
    start = np.clip(left, 0, span_w)
    stop = np.clip(right, 0, span_w)
    keep = start < stop
    row_at = pix_off[span_item[keep]] + span_row[keep] * span_w[keep]
    buf = _burn_runs(row_at + start[keep], row_at + stop[keep], total)
    offs = pix_off.tolist()
    edge_off = np.searchsorted(edge_item, np.arange(n + 1)).tolist() if all_touched else []
    for k, (i, _, h, w, _) in enumerate(chunk):
        mask = buf[offs[k] : offs[k + 1]].reshape(h, w).copy()
        if all_touched:
            burner = _Burner(h, w, mask)
            e0, e1 = edge_off[k], edge_off[k + 1]
            _walk(burner, x1[e0:e1], y1[e0:e1], x2[e0:e1], y2[e0:e1], intersect_only=True)
            burner.result()
        out[i] = mask


def _one_by_one(
    chunk: list[tuple[int, BaseGeometry, int, int, Affine6]],
    all_touched: bool,
    out: list[np.ndarray | None],
    items: list[tuple[BaseGeometry, tuple[int, int], Iterable[float]]],
) -> None:
    """The chunk's masks from `geometry_mask`, one call per item (the batched fill's way out)."""
    for i, *_ in chunk:
        geom, out_shape, transform = items[i]
        out[i] = geometry_mask(geom, out_shape, transform, all_touched)


def _burn_runs(starts: np.ndarray, stops: np.ndarray, total: int) -> np.ndarray:
    """Flat boolean buffer of `total` cells, True on the union of the runs [start, stop) (non-empty runs).

    Overlapping runs (parts of a MultiPolygon) are merged first; the buffer is then one `np.repeat` of
    alternating False/True over the gap and run lengths.
    """
    order = np.argsort(starts, kind="stable")  # spans mostly arrive sorted already
    a, b = starts[order], stops[order]
    reach = np.maximum.accumulate(b)
    new = np.ones(len(a), dtype=bool)
    new[1:] = a[1:] > reach[:-1]
    last = np.ones(len(a), dtype=bool)
    last[:-1] = new[1:]
    m = int(new.sum())
    bounds = np.empty(2 * m + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = a[new]
    bounds[2:-1:2] = reach[last]
    bounds[-1] = total
    values = np.zeros(2 * m + 1, dtype=bool)
    values[1::2] = True
    return np.repeat(values, np.diff(bounds))


def _flatten(geom: BaseGeometry) -> list[BaseGeometry]:
    """Non-empty simple parts in order: GDAL burns each part of a collection on its own."""
    if geom.is_empty:
        return []
    kind = geom.geom_type
    if kind in ("Polygon", "Point", "LineString", "LinearRing"):
        return [geom]
    if kind in ("MultiPolygon", "MultiPoint", "MultiLineString", "GeometryCollection"):
        out: list[BaseGeometry] = []
        for part in shapely.get_parts(geom):
            out.extend(_flatten(part))
        return out
    raise GeometryError(f"cannot rasterise a {kind}")


class _Burner:
    """The mask being burned, plus the single cells that line walks and points add to it."""

    def __init__(self, height: int, width: int, mask: np.ndarray | None = None) -> None:
        self.height = height
        self.width = width
        self.mask = np.zeros((height, width), dtype=bool) if mask is None else mask
        self.cells: list[tuple[int, int]] = []
        self.cell_rows: list[np.ndarray] = []
        self.cell_cols: list[np.ndarray] = []

    def spans(self, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
        """Burn columns [start, stop) of each row; spans are clipped to the grid here."""
        keep = (starts < self.width) & (stops > 0) & (starts < stops) & (rows >= 0) & (rows < self.height)
        if not keep.any():
            return
        rows, starts, stops = rows[keep], starts[keep], stops[keep]
        if self.width > _WIDE or len(rows) <= _FEW_SPANS:
            # Wide grids, or a small AOI's few spans: one slice assignment per span costs less than
            # comparing whole rows.
            flat = self.mask.reshape(-1)
            base = rows * self.width
            lo = (base + np.maximum(starts, 0)).tolist()
            hi = (base + np.minimum(stops, self.width)).tolist()
            for a, b in zip(lo, hi, strict=True):
                flat[a:b] = True
            return
        # Spans as row-wide comparisons against the column index: small integer types let NumPy
        # compare many columns per instruction. Several spans on one row are OR-ed together 64
        # columns at a time (rows padded to a multiple of 8 bytes) before they reach the mask.
        itype = np.int16 if self.width < 2**15 - 1 else np.int32
        padded = -(-self.width // 8) * 8
        cols = np.arange(padded, dtype=itype)
        order = np.argsort(rows, kind="stable")
        rows = rows[order]
        lo = np.maximum(starts[order], 0).astype(itype)[:, None]
        hi = np.minimum(stops[order], self.width).astype(itype)[:, None]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        groups = np.flatnonzero(first)
        # Bound the temporary (spans x columns) to a few MB by taking whole rows at a time.
        step = max(1, (1 << 22) // padded)
        for g0 in range(0, len(groups), step):
            a = int(groups[g0])
            b = int(groups[g0 + step]) if g0 + step < len(groups) else len(rows)
            runs = (cols >= lo[a:b]) & (cols < hi[a:b])
            sub_rows = rows[a:b]
            if b - a > min(step, len(groups) - g0):
                at = groups[g0 : g0 + step] - a
                runs = np.bitwise_or.reduceat(runs.view(np.uint64), at, axis=0).view(bool)
                sub_rows = sub_rows[at]
            self.mask[sub_rows] |= runs[:, : self.width]

    def cell_array(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Burn single cells given as index arrays, the way GDAL's line walk writes its buffer.

        GDAL checks only the row: a column one past the right edge lands at the start of the next
        row of its buffer, and we reproduce that. Cells outside the buffer are dropped.
        """
        h, w = self.height, self.width
        keep = (rows >= 0) & (rows < h) & (cols >= 0)
        flat = rows[keep] * w + cols[keep]
        flat = flat[flat < h * w]
        if len(flat):
            self.cell_rows.append(flat // w)
            self.cell_cols.append(flat % w)

    def result(self) -> np.ndarray:
        """The mask: union of every span and cell burned so far."""
        if self.cells:
            cells = np.array(self.cells, dtype=np.int64)
            self.mask[cells[:, 0], cells[:, 1]] = True
        if self.cell_rows:
            self.mask[np.concatenate(self.cell_rows), np.concatenate(self.cell_cols)] = True
        return self.mask


def _is_clockwise(x: np.ndarray, y: np.ndarray) -> bool:
    """OGR's `OGRLinearRing::isClockwise` on a closed ring in world coordinates (y up)."""
    n = len(x)
    if n < 2:
        return True
    # Pivot: first of the lowest, then rightmost, vertices among all but the closing point.
    xs, ys = x[: n - 1], y[: n - 1]
    lowest = ys == ys.min()
    v = int(np.flatnonzero(lowest & (xs == xs[lowest].max()))[0])
    fallback = bool(((xs[v + 1 :] == xs[v]) & (ys[v + 1 :] == ys[v])).any())
    prev = v - 1 if v > 0 else n - 2
    if abs(x[prev] - x[v]) < _ORIENTATION_EPS and abs(y[prev] - y[v]) < _ORIENTATION_EPS:
        fallback = True
    dx0 = x[prev] - x[v]
    dy0 = y[prev] - y[v]
    nxt = v + 1 if v + 1 < n - 1 else 0
    if abs(x[nxt] - x[v]) < _ORIENTATION_EPS and abs(y[nxt] - y[v]) < _ORIENTATION_EPS:
        fallback = True
    dx1 = x[nxt] - x[v]
    dy1 = y[nxt] - y[v]
    cross = dx1 * dy0 - dx0 * dy1
    if not fallback:
        if cross > 0:
            return False
        if cross < 0:
            return True
    # Degenerate pivot: the shoelace sum, in OGR's order of operations.
    total = float(x[0]) * (float(y[1]) - float(y[n - 1]))
    for i in range(1, n - 1):
        total += float(x[i]) * (float(y[i + 1]) - float(y[i - 1]))
    total += float(x[n - 1]) * (float(y[0]) - float(y[n - 2]))
    return total < 0


def _ceil_row(v: np.ndarray) -> np.ndarray:
    """Smallest integer r with r + 0.5 >= v, exactly (v finite), as float."""
    r = np.ceil(v - 0.5)
    r = np.where(r - 0.5 >= v, r - 1.0, r)
    return np.where(r + 0.5 < v, r + 1.0, r)


def _polygon_rings(polygons: Sequence[BaseGeometry] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates of every ring, the ring offsets into them and the polygon of each ring."""
    if len(polygons) == 1 and not polygons[0].interiors:
        coords = shapely.get_coordinates(polygons[0])
        return coords, np.array([0, len(coords)]), np.zeros(1, dtype=np.int64)
    rings, poly_of_ring = shapely.get_rings(np.asarray(polygons, dtype=object), return_index=True)
    sizes = shapely.get_num_coordinates(rings)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return shapely.get_coordinates(rings), offsets, poly_of_ring.astype(np.int64)


def _pixel_coords(coords: np.ndarray, inv: Affine6 | tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """World (wx, wy) and pixel (px, py) coordinates of the vertices; `inv` may hold one value per vertex."""
    if not np.isfinite(coords).all():
        raise GeometryError("the AOI has non-finite coordinates")
    wx = np.ascontiguousarray(coords[:, 0], dtype=np.float64)
    wy = np.ascontiguousarray(coords[:, 1], dtype=np.float64)
    px, py = apply_gdal(cast(Affine6, inv), wx, wy)
    if not (np.isfinite(px).all() and np.isfinite(py).all()):
        raise GeometryError("the AOI has coordinates that do not map to finite pixel positions")
    return wx, wy, px, py


def _ring_edges(px: np.ndarray, py: np.ndarray, ring_off: np.ndarray) -> tuple[np.ndarray, ...]:
    """Edges i -> i+1 inside each ring (rings are closed, so the closing edge is among them), with their ring."""
    n_rings = len(ring_off) - 1
    if n_rings == 1:
        return px[:-1], py[:-1], px[1:], py[1:], np.zeros(max(len(px) - 1, 0), dtype=np.int64)
    ring_of_vertex = np.repeat(np.arange(n_rings), np.diff(ring_off))
    first = np.flatnonzero(ring_of_vertex[:-1] == ring_of_vertex[1:])
    return px[first], py[first], px[first + 1], py[first + 1], ring_of_vertex[first]


def _fill_spans(
    x1: np.ndarray,
    y1: np.ndarray,
    x2: np.ndarray,
    y2: np.ndarray,
    base: np.ndarray | None,
    height: int | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GDAL's scanline fill (GDALdllImageFilledPolygon) as spans: (base + row, first col, stop col).

    `base` (per edge, or None for 0) separates the polygons burned on their own: crossings are paired
    per (base + row), so each polygon's rows need their own range of ids. `height` is the grid height,
    one value or one per edge. Spans are not yet clipped to the grid's columns.
    """
    sloped = y1 != y2
    up = y1 < y2
    ya = np.where(up, y1, y2)[sloped]
    yb = np.where(up, y2, y1)[sloped]
    xa = np.where(up, x1, x2)[sloped]
    xb = np.where(up, x2, x1)[sloped]
    h = float(height) if isinstance(height, int) else height[sloped].astype(np.float64)
    # Scanlines r crossed by an edge: ya <= r + 0.5 < yb, limited to the grid.
    lo = np.clip(_ceil_row(ya), 0.0, h).astype(np.int64)
    hi = np.clip(_ceil_row(yb), 0.0, h).astype(np.int64)
    idx, rows = _runs(lo, hi - 1)
    if not len(rows):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    ya_i, xa_i = ya[idx], xa[idx]
    # GDAL's expression, operation for operation: (dy - y1) * (x2 - x1) / (y2 - y1) + x1.
    cross = (rows + 0.5 - ya_i) * (xb[idx] - xa_i) / (yb[idx] - ya_i) + xa_i
    xi = np.floor(np.clip(cross + 0.5, _INT_MIN, _INT_MAX)).astype(np.int64)
    # Sort crossings by (polygon, row, x) with one int64 key; pair them up per scanline.
    group = rows if base is None else base[sloped][idx] + rows
    key = np.sort((group << 32) | (xi + 2**31))
    xs = (key & 0xFFFFFFFF) - 2**31
    return key[0::2] >> 32, xs[0::2], xs[1::2]


def _burn_polygons(burner: _Burner, polygons: list[BaseGeometry], inv: Affine6, all_touched: bool) -> None:
    """Scanline-fill each polygon (GDALdllImageFilledPolygon), plus the ALL_TOUCHED edge walk."""
    coords, ring_off, poly_of_ring = _polygon_rings(polygons)
    wx, wy, px, py = _pixel_coords(coords, inv)
    h, w = burner.height, burner.width
    x1, y1, x2, y2, edge_ring = _ring_edges(px, py, ring_off)
    base = poly_of_ring[edge_ring] * h if len(polygons) > 1 else None
    group, left, right = _fill_spans(x1, y1, x2, y2, base, h)
    if len(group):
        burner.spans(group % h, left, right)
    flat = y1 == y2
    if flat.any():
        found = _horizontal_spans(wx, wy, ring_off, x1[flat], x2[flat], y1[flat], edge_ring[flat], h, w)
        if found is not None:
            burner.spans(*found[1:])
    if all_touched:
        _walk(burner, x1, y1, x2, y2, intersect_only=True)


def _horizontal_spans(
    wx: np.ndarray,
    wy: np.ndarray,
    ring_off: np.ndarray,
    x1: np.ndarray,
    x2: np.ndarray,
    y: np.ndarray,
    ring: np.ndarray,
    height: int | np.ndarray,
    width: int | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Horizontal edges lying exactly on a centre row burn on their own when they run right to left.

    Returns (edge index, row, first col, stop col) of those spans, or None. `height` and `width` are
    one value or one per edge. "Right to left" is judged after GDAL has turned the ring clockwise in
    world coordinates, so the ring orientation is needed, and only here.
    """
    row = np.floor(y)
    cand = (x1 != x2) & (row + 0.5 == y) & (row >= 0) & (row < height)
    if not cand.any():
        return None
    flipped: dict[int, bool] = {}
    for r in set(ring[cand].tolist()):  # not np.unique: it imports numpy.ma on first use
        s, e = int(ring_off[r]), int(ring_off[r + 1])
        flipped[r] = not _is_clockwise(wx[s:e], wy[s:e])
    flip = np.array([flipped.get(r, False) for r in ring.tolist()], dtype=bool)
    runs_left = np.where(flip, x2 > x1, x1 > x2) & cand
    if not runs_left.any():
        return None
    w = np.broadcast_to(width, x1.shape)[runs_left]
    lo_x = np.floor(np.minimum(x1, x2)[runs_left] + 0.5)
    hi_x = np.floor(np.maximum(x1, x2)[runs_left] + 0.5)
    ok = (lo_x <= w - 1) & (hi_x > 0)
    lo_i = np.clip(lo_x[ok], -1, w[ok] + 1).astype(np.int64)
    hi_i = np.clip(hi_x[ok], -1, w[ok] + 1).astype(np.int64)
    return np.flatnonzero(runs_left)[ok], row[runs_left][ok].astype(np.int64), lo_i, hi_i


def _walk(
    burner: _Burner, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, intersect_only: bool
) -> None:
    """GDALdllImageLineAllTouched over many segments at once: burn every cell each one enters.

    For polygon rings GDAL asks for the cells an edge really crosses (`intersect_only`): an axis-parallel
    edge lying on a cell boundary burns nothing. Segments are classified and clipped with GDAL's own
    arithmetic; sloped ones then get their cells from the grid lines they cross. GDAL finds those
    cells by stepping, and its accumulated rounding can only matter where a segment passes within a
    hair of a cell corner or ends near one; such segments are walked step by step instead.
    """
    w, h = burner.width, burner.height
    off = ((y0 < 0) & (y1 < 0)) | ((y0 > h) & (y1 > h)) | ((x0 < 0) & (x1 < 0)) | ((x0 > w) & (x1 > w))
    swap = x0 > x1
    xa = np.where(swap, x1, x0)[~off]
    ya = np.where(swap, y1, y0)[~off]
    xb = np.where(swap, x0, x1)[~off]
    yb = np.where(swap, y0, y1)[~off]
    vertical = (np.floor(xa) == np.floor(xb)) | (np.abs(xa - xb) < _AXIS_EPS)
    horizontal = ~vertical & ((np.floor(ya) == np.floor(yb)) | (np.abs(ya - yb) < _AXIS_EPS))
    if vertical.any():
        _walk_vertical(burner, xa[vertical], ya[vertical], xb[vertical], yb[vertical], intersect_only)
    if horizontal.any():
        _walk_horizontal(burner, xa[horizontal], ya[horizontal], xb[horizontal], yb[horizontal], intersect_only)
    sloped = ~(vertical | horizontal)
    if sloped.any():
        _walk_sloped(burner, xa[sloped], ya[sloped], xb[sloped], yb[sloped])


def _on_boundary(v: np.ndarray) -> np.ndarray:
    return np.abs(v - np.round(v)) < _INTERSECT_EPS


def _runs(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand integer runs [start, stop] into (run index, value) pairs."""
    count = np.maximum(stops - starts + 1, 0)
    total = int(count.sum())
    idx = np.repeat(np.arange(len(count)), count)
    return idx, starts[idx] + (np.arange(total) - (np.cumsum(count) - count)[idx])


def _to_int(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(v, lo, hi).astype(np.int64)


def _walk_vertical(
    burner: _Burner, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, intersect_only: bool
) -> None:
    """Segments within one column (or nearly vertical): the column of the right end, top to bottom."""
    w, h = burner.width, burner.height
    keep = ~(_on_boundary(x0) & _on_boundary(x1)) if intersect_only else np.ones(len(x0), dtype=bool)
    top = np.minimum(y0, y1)
    bottom = np.maximum(y0, y1)
    col = np.floor(x1)
    keep &= (col >= 0) & (col < w)
    first = np.maximum(_to_int(np.floor(top), -1, h + 1), 0)
    last = np.minimum(_to_int(np.floor(bottom - _INTERSECT_EPS), -2, h + 1), h - 1)
    idx, rows = _runs(first[keep], last[keep])
    burner.cell_array(rows, col[keep].astype(np.int64)[idx])


def _walk_horizontal(
    burner: _Burner, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, intersect_only: bool
) -> None:
    """Segments within one row (or nearly horizontal): the row of the left end, left to right."""
    w, h = burner.width, burner.height
    keep = ~(_on_boundary(y0) & _on_boundary(y1)) if intersect_only else np.ones(len(x0), dtype=bool)
    row = np.floor(y0)
    keep &= (row >= 0) & (row < h)
    first = np.maximum(_to_int(np.floor(x0), -1, w + 1), 0)
    last = np.minimum(_to_int(np.floor(x1 - _INTERSECT_EPS), -2, w + 1), w - 1)
    idx, cols = _runs(first[keep], last[keep])
    burner.cell_array(row[keep].astype(np.int64)[idx], cols)


# Sloped segments are walked one step at a time when a crossing comes closer to a cell corner than
# GDAL's accumulated rounding (bounded per segment from its length and magnitude) could reach, or
# when their pixel coordinates are too large for that bound to mean anything.
_ROUNDING = 64 * 2.0**-52
_TIE_RANGE = 1e9


def _walk_sloped(burner: _Burner, x: np.ndarray, y: np.ndarray, x_end: np.ndarray, y_end: np.ndarray) -> None:
    """Sloped segments, left to right: GDAL's clipping, then the cells at every grid line crossed."""
    w, h = float(burner.width), float(burner.height)
    slope = (y_end - y) / (x_end - x)
    # GDAL's clipping, branch for branch (including its end moving the wrong way below the grid).
    # Most segments need none of it, so each step is skipped when no segment needs it.
    c = x_end > w
    if c.any():
        y_end = np.where(c, y_end - (x_end - w) * slope, y_end)
        x_end = np.where(c, w, x_end)
    c = x < 0.0
    if c.any():
        y = np.where(c, y + (0.0 - x) * slope, y)
        x = np.where(c, 0.0, x)
    down = y_end > y
    c = down & (y < 0.0)
    if c.any():
        x = np.where(c, x + (0.0 - y) / slope, x)
        y = np.where(c, 0.0, y)
    c = down & (y_end >= h)
    if c.any():
        x_end = np.where(c, x_end + (y_end - h) / slope, x_end)
    c = ~down & (y >= h)
    if c.any():
        x = np.where(c, x + (h - y) / slope, x)
        y = np.where(c, h, y)
    c = ~down & (y_end < 0.0)
    if c.any():
        x_end = np.where(c, x_end - (y_end - 0.0) / slope, x_end)
    run = (x >= 0.0) & (x < x_end)
    if not run.any():
        return
    x, y, x_end, slope = x[run], y[run], x_end[run], slope[run]
    y_at_end = y + (x_end - x) * slope
    # GDAL's y drifts by at most a few ulps per step; x inherits that drift divided by the slope,
    # plus its own ulps and the 1e-9 nudges across row lines.
    xmag = np.maximum(np.maximum(np.abs(x), np.abs(x_end)), 1.0)
    ymag = np.maximum(np.maximum(np.abs(y), np.abs(y_at_end)), 1.0)
    steps = (x_end - x) + np.abs(y_at_end - y) + 2.0
    tol_y = 1e-9 + 2 * _MIN_ROW_STEP + _ROUNDING * ymag * steps
    tol_x = 1e-9 + _ROUNDING * xmag + (tol_y + 2 * _MIN_ROW_STEP) / np.abs(slope)
    tie = ~((xmag < _TIE_RANGE) & (ymag < _TIE_RANGE))
    tie |= np.abs(x - np.round(x)) < tol_x
    tie |= np.abs(y - np.round(y)) < tol_y
    tie |= np.abs(y_at_end - np.round(y_at_end)) < tol_y
    # Cells past these bounds can never reach GDAL's buffer, so the runs are capped there.
    cap = float(burner.width * burner.height + 1)
    # Column lines X with x < X < x_end: GDAL lands on X exactly and burns (X, floor(y(X))).
    idx, cols = _runs(_to_int(np.floor(x) + 1, 0, cap), _to_int(np.ceil(x_end) - 1, -1, cap))
    ycol = y[idx] + (cols - x[idx]) * slope[idx]
    tie[idx[np.abs(ycol - np.round(ycol)) < tol_y[idx]]] = True
    # Row lines: going down (slope > 0) GDAL lands on Y and burns row Y; going up it stops just
    # above Y (a 1e-9 step) and burns row Y - 1, each at the column where the segment crosses Y.
    pos = slope > 0
    first = np.where(pos, np.floor(y) + 1, np.floor(y_at_end) + 1)
    last = np.where(pos, np.ceil(y_at_end) - 1, np.floor(y))
    ridx, yrow = _runs(_to_int(first, -1, h + 1), _to_int(last, -2, h + 1))
    xrow = x[ridx] + (yrow - y[ridx]) / slope[ridx]
    rtol = tol_x[ridx]
    tie[ridx[(np.abs(xrow - np.round(xrow)) < rtol) | (np.abs(xrow - x_end[ridx]) < rtol)]] = True
    # The start cell and every crossing cell of the segments without a tie.
    keep_c = ~tie[idx]
    keep_r = ~tie[ridx]
    burner.cell_array(np.floor(y[~tie]).astype(np.int64), np.floor(x[~tie]).astype(np.int64))
    burner.cell_array(np.floor(ycol[keep_c]).astype(np.int64), cols[keep_c])
    burner.cell_array(
        yrow[keep_r] - np.where(pos[ridx][keep_r], 0, 1),
        np.floor(xrow[keep_r]).astype(np.int64),
    )
    for i in np.flatnonzero(tie).tolist():
        _walk_steps(burner, float(x[i]), float(y[i]), float(x_end[i]), float(slope[i]))


def _walk_steps(burner: _Burner, x: float, y: float, x_end: float, slope: float) -> None:
    """GDAL's cell-by-cell walk of one clipped sloped segment, with its arithmetic step for step."""
    w, h = burner.width, burner.height
    cells = burner.cells
    floor = math.floor
    while x >= 0.0 and x < x_end:
        ix = floor(x)
        iy = floor(y)
        if 0 <= iy < h:
            # GDAL checks only the row: one past the right edge lands on the next row of its buffer.
            if ix < w:
                cells.append((iy, ix))
            elif iy * w + ix < w * h:
                cells.append(divmod(iy * w + ix, w))
            elif slope > 0:
                return  # y never decreases from here, so neither does the buffer offset
        elif (iy >= h) == (slope > 0):
            return  # past the grid and moving away from it
        step_x = floor(x + 1.0) - x
        step_y = step_x * slope
        if floor(y + step_y) == iy:
            x += step_x
            y += step_y
        elif slope < 0:
            step_y = iy - y
            if step_y > -_MIN_ROW_STEP:
                step_y = -_MIN_ROW_STEP
            x += step_y / slope
            y += step_y
        else:
            step_y = (iy + 1) - y
            if step_y < _MIN_ROW_STEP:
                step_y = _MIN_ROW_STEP
            x += step_y / slope
            y += step_y


def _burn_point(burner: _Burner, point: BaseGeometry, inv: Affine6) -> None:
    """GDALdllImagePoint: the cell containing the point, if inside the grid."""
    px, py = apply_gdal(inv, float(point.x), float(point.y))
    if not (math.isfinite(px) and math.isfinite(py)):
        raise GeometryError("the point does not map to finite pixel coordinates")
    ix, iy = math.floor(px), math.floor(py)
    if 0 <= ix < burner.width and 0 <= iy < burner.height:
        burner.cells.append((iy, ix))


def _burn_line(burner: _Burner, line: BaseGeometry, inv: Affine6, all_touched: bool) -> None:
    """A LineString the way GDAL draws it: the ALL_TOUCHED walk or Bresenham, vertices last to first."""
    coords = shapely.get_coordinates(line)[::-1]
    if not np.isfinite(coords).all():
        raise GeometryError("the line has non-finite coordinates")
    px, py = apply_gdal(inv, coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64))
    if not (np.isfinite(px).all() and np.isfinite(py).all()):
        raise GeometryError("the line does not map to finite pixel coordinates")
    if all_touched:
        _walk(burner, px[:-1], py[:-1], px[1:], py[1:], intersect_only=False)
        return
    xs, ys = px.tolist(), py.tolist()
    n = len(xs)
    w, h = burner.width, burner.height
    cells = burner.cells
    for j in range(1, n):
        ix, iy = math.floor(xs[j - 1]), math.floor(ys[j - 1])
        ix1, iy1 = math.floor(xs[j]), math.floor(ys[j])
        ddx, ddy = abs(ix1 - ix), abs(iy1 - iy)
        sx = -1 if ix > ix1 else 1
        sy = -1 if iy > iy1 else 1
        last = j == n - 1
        if ddx >= ddy:
            x_err = ddy << 1
            y_err = x_err - (ddx << 1)
            err = x_err - ddx
            steps = ddx if last else ddx - 1
            for _ in range(steps + 1):
                if 0 <= ix < w and 0 <= iy < h:
                    cells.append((iy, ix))
                ix += sx
                if err > 0:
                    iy += sy
                    err += y_err
                else:
                    err += x_err
        else:
            x_err = ddx << 1
            y_err = x_err - (ddy << 1)
            err = x_err - ddy
            steps = ddy if last else ddy - 1
            for _ in range(steps + 1):
                if 0 <= ix < w and 0 <= iy < h:
                    cells.append((iy, ix))
                iy += sy
                if err > 0:
                    ix += sx
                    err += y_err
                else:
                    err += x_err
