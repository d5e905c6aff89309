"""Pixel windows: which part of a raster an AOI or a point needs, and which tiles (and tile rows) hold it.

`geometry_window` equals rasterio's `features.geometry_window` followed by the intersection with the
raster that `rasterio.mask.mask(..., crop=True)` performs: every vertex goes through the inverse affine
(computed like the `affine` package), the window is floor/ceil of their extent, and an AOI that only
touches the raster's edge (an empty intersection) misses it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import GeometryError
from .geobox import affine_inverse, apply, as_affine6


@dataclass(frozen=True)
class Window:
    """A block of pixels: top-left (col_off, row_off) and size, all integers."""

    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def row_stop(self) -> int:
        """One past the last row."""
        return self.row_off + self.height

    @property
    def col_stop(self) -> int:
        """One past the last column."""
        return self.col_off + self.width

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), the NumPy order."""
        return (self.height, self.width)

    def intersection(self, other: Window) -> Window | None:
        """The overlap of two windows, or None when it is empty (rasterio raises WindowError there)."""
        col = max(self.col_off, other.col_off)
        row = max(self.row_off, other.row_off)
        width = min(self.col_stop, other.col_stop) - col
        height = min(self.row_stop, other.row_stop) - row
        if width <= 0 or height <= 0:
            return None
        return Window(col, row, width, height)


def geometry_window(
    geom: BaseGeometry, transform: Iterable[float], width: int, height: int
) -> Window | None:
    """The window of a `width` x `height` raster that covers `geom` (raster CRS), or None if it misses.

    Floor of the smallest and ceil of the largest pixel coordinate of any vertex, clipped to the raster.
    """
    (found,) = geometry_windows([geom], transform, width, height)
    if isinstance(found, GeometryError):
        raise found
    return found


def geometry_windows(geoms: Sequence[BaseGeometry], transform: Iterable[float], width: int, height: int
                     ) -> list[Window | GeometryError | None]:
    """The windows of many geometries on one grid in one vectorised pass (a batch meets each grid with
    thousands of AOIs): `geometry_window`'s rule, which it applies to one. A geometry that maps to
    non-finite pixel coordinates gets its GeometryError; an empty one None."""
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = list(geoms)
    coords, owner = shapely.get_coordinates(arr, return_index=True)
    out: list[Window | GeometryError | None] = [None] * len(geoms)  # no coordinates: empty, None
    if len(coords) == 0:
        return out
    inv = affine_inverse(as_affine6(transform))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite results are this function's GeometryError
        cols, rows = apply(inv, coords[:, 0], coords[:, 1])
    counts = np.bincount(owner, minlength=len(geoms))
    present = np.flatnonzero(counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[present]  # coordinates come grouped by owner
    finite = np.logical_and.reduceat(np.isfinite(cols) & np.isfinite(rows), starts)
    bounds = zip(present.tolist(), finite.tolist(), np.minimum.reduceat(cols, starts).tolist(),
                 np.maximum.reduceat(cols, starts).tolist(), np.minimum.reduceat(rows, starts).tolist(),
                 np.maximum.reduceat(rows, starts).tolist(), strict=True)
    raster = Window(0, 0, width, height)
    for i, ok, c0, c1, r0, r1 in bounds:
        if not ok:
            out[i] = GeometryError("the AOI does not map to finite pixel coordinates")
            continue
        col_start, row_start = math.floor(c0), math.floor(r0)
        win = Window(col_start, row_start, max(math.ceil(c1) - col_start, 0), max(math.ceil(r1) - row_start, 0))
        out[i] = win.intersection(raster)
    return out


def point_pixel(x: float, y: float, transform: Iterable[float]) -> tuple[int, int]:
    """(row, col) of the pixel under the point: floor through the inverse affine, like `dataset.index`.

    The result may lie outside the raster; callers check it against the raster size.
    """
    inv = affine_inverse(as_affine6(transform))
    col, row = apply(inv, float(x), float(y))
    if not (math.isfinite(col) and math.isfinite(row)):
        raise GeometryError(f"point ({x}, {y}) does not map to finite pixel coordinates")
    return math.floor(row), math.floor(col)


class TilePart(NamedTuple):
    """One tile a window touches and the block of it the window needs.

    `first_row`..`last_row` and `first_col`..`last_col` (inclusive) are pixel offsets inside the tile;
    `window_row`/`window_col` say where that block lands in the window. Decoding the tile's first
    `last_row + 1` rows is enough. (A tuple: a batch of small AOIs makes thousands, and a frozen
    dataclass costs three times as much to create.)
    """

    tile_row: int
    tile_col: int
    first_row: int
    last_row: int
    first_col: int
    last_col: int
    window_row: int
    window_col: int

    @property
    def rows_needed(self) -> int:
        """How many rows of the tile, from its top, must be decoded."""
        return self.last_row + 1


def tiles_for_window(
    window: Window, tile_width: int, tile_height: int, image_width: int, image_height: int
) -> list[TilePart]:
    """Every tile (row-major) that `window` touches, with the rows and columns of it the window needs.

    Tiles are stored full size even at the right and bottom edges, but the window is inside the image,
    so the parts returned never reach into an edge tile's padding.
    """
    if tile_width <= 0 or tile_height <= 0:
        raise ValueError(f"tile size must be positive, got {tile_width}x{tile_height}")
    if window.width <= 0 or window.height <= 0:
        return []
    if (
        window.col_off < 0
        or window.row_off < 0
        or window.col_stop > image_width
        or window.row_stop > image_height
    ):
        raise ValueError(f"{window} is not inside the {image_width}x{image_height} image")
    parts: list[TilePart] = []
    first_tr, last_tr = window.row_off // tile_height, (window.row_stop - 1) // tile_height
    first_tc, last_tc = window.col_off // tile_width, (window.col_stop - 1) // tile_width
    for tr in range(first_tr, last_tr + 1):
        top = tr * tile_height
        r0 = max(window.row_off, top) - top
        r1 = min(window.row_stop, top + tile_height) - 1 - top
        for tc in range(first_tc, last_tc + 1):
            left = tc * tile_width
            c0 = max(window.col_off, left) - left
            c1 = min(window.col_stop, left + tile_width) - 1 - left
            parts.append(
                TilePart(tr, tc, r0, r1, c0, c1, top + r0 - window.row_off, left + c0 - window.col_off)
            )
    return parts
