"""Affine transforms as plain 6-tuples, with the float arithmetic of the libraries we must equal.

Two inverses live here on purpose. Windows and point lookups follow rasterio, which inverts with the
`affine` package; masks follow GDAL's rasteriser, which inverts with `GDALInvGeoTransform`. The two
round differently (`e / (a*e)` versus `1 / a`), and a vertex lying exactly on a pixel boundary can land
on either side of it, so each caller uses the inverse of the library it has to match.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Affine6 = tuple[float, float, float, float, float, float]
"""(a, b, c, d, e, f) in rasterio order: x = a*col + b*row + c, y = d*col + e*row + f."""

_N = TypeVar("_N", float, np.ndarray)


def as_affine6(transform: Iterable[float]) -> Affine6:
    """Coerce an `affine.Affine`, a 6- or 9-sequence in rasterio order, into an `Affine6` of floats."""
    vals = tuple(transform)
    if len(vals) not in (6, 9):
        raise ValueError(f"an affine transform needs 6 coefficients, got {len(vals)}")
    a, b, c, d, e, f = (float(v) for v in vals[:6])
    return (a, b, c, d, e, f)


def is_invertible(t: Affine6) -> bool:
    """True when the transform has a non-zero determinant (the `affine` package's test)."""
    a, b, _, d, e, _ = t
    return a * e - b * d != 0.0


def affine_inverse(t: Affine6) -> Affine6:
    """Inverse exactly as `~affine.Affine` computes it (what rasterio windows and `index` use)."""
    sa, sb, sc, sd, se, sf = t
    det = sa * se - sb * sd
    if det == 0.0:
        raise ValueError(f"affine transform {t} is degenerate and cannot be inverted")
    idet = 1.0 / det
    ra = se * idet
    rb = -sb * idet
    rd = -sd * idet
    re = sa * idet
    return (ra, rb, -sc * ra - sf * rb, rd, re, -sc * rd - sf * re)


def gdal_inverse(t: Affine6) -> Affine6:
    """Inverse exactly as GDAL's `GDALInvGeoTransform` computes it, returned in rasterio order.

    This is what GDAL applies to every vertex before it burns a polygon, so masks must use it.
    """
    a, b, c, d, e, f = t
    if b == 0.0 and d == 0.0 and a != 0.0 and e != 0.0:
        # GDAL's no-rotation shortcut: one division per axis.
        return (1.0 / a, 0.0, -c / a, 0.0, 1.0 / e, -f / e)
    det = a * e - b * d
    magnitude = max(max(abs(a), abs(b)), max(abs(d), abs(e)))
    if abs(det) <= 1e-10 * magnitude * magnitude:
        raise ValueError(f"affine transform {t} is degenerate and cannot be inverted")
    inv_det = 1.0 / det
    return (
        e * inv_det,
        -b * inv_det,
        (b * f - c * e) * inv_det,
        -d * inv_det,
        a * inv_det,
        (-a * f + c * d) * inv_det,
    )


def apply(t: Affine6, x: _N, y: _N) -> tuple[_N, _N]:
    """Map (x, y) through `t` in the `affine` package's order: x*a + y*b + c (scalars or arrays)."""
    a, b, c, d, e, f = t
    return x * a + y * b + c, x * d + y * e + f


def apply_gdal(t: Affine6, x: _N, y: _N) -> tuple[_N, _N]:
    """Map (x, y) through `t` in GDAL's order: c + x*a + y*b (as GDALGenImgProjTransform sums)."""
    a, b, c, d, e, f = t
    return c + x * a + y * b, f + x * d + y * e


def window_transform(t: Affine6, col_off: float, row_off: float) -> Affine6:
    """Transform of a window whose top-left pixel is (col_off, row_off), with rasterio's arithmetic.

    rasterio maps the offset to world coordinates and composes a translation with the transform,
    so the new origin is c + (x - c), which is not always x; we reproduce that rounding.
    """
    a, b, c, d, e, f = t
    x = col_off * a + row_off * b + c
    y = col_off * d + row_off * e + f
    tx = x - c
    ty = y - f
    # Affine.translation(tx, ty) @ t, term by term as the `affine` package multiplies.
    return (
        1.0 * a + 0.0 * d,
        1.0 * b + 0.0 * e,
        1.0 * c + 0.0 * f + tx,
        0.0 * a + 1.0 * d,
        0.0 * b + 1.0 * e,
        0.0 * c + 1.0 * f + ty,
    )


def is_rectilinear(t: Affine6) -> bool:
    """True when the transform has no rotation or shear terms (north-up or south-up grids)."""
    return t[1] == 0.0 and t[3] == 0.0


@dataclass(frozen=True)
class GeoBox:
    """A raster grid: its size in pixels, its affine transform and its CRS (any pyproj-readable text)."""

    width: int
    height: int
    transform: Affine6
    crs: str | None = None

    def __post_init__(self) -> None:
        if self.width < 0 or self.height < 0:
            raise ValueError(f"GeoBox size must be non-negative, got {self.width}x{self.height}")
        object.__setattr__(self, "transform", as_affine6(self.transform))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), the NumPy order."""
        return (self.height, self.width)

    def crop(self, col_off: int, row_off: int, width: int, height: int) -> GeoBox:
        """The grid of a pixel window of this one, with rasterio's window-transform arithmetic."""
        return GeoBox(width, height, window_transform(self.transform, col_off, row_off), self.crs)

    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the four grid corners in world coordinates."""
        cols = np.array([0.0, self.width, self.width, 0.0])
        rows = np.array([0.0, 0.0, self.height, self.height])
        xs, ys = apply(self.transform, cols, rows)
        return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
