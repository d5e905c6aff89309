"""Windows, points and tile plans against rasterio on real in-memory datasets (rasterio.MemoryFile).

Oracles: `rasterio.features.geometry_window` intersected with the raster (what `mask(..., crop=True)`
does), the whole `rasterio.mask.mask(..., crop=True, filled=True)` output, `dataset.index` and
`dataset.sample`, `~affine.Affine` and `rasterio.windows.transform`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import rasterio
import shapely
import shapely.affinity
from affine import Affine
from rasterio.errors import WindowError
from rasterio.features import geometry_window as rio_geometry_window
from rasterio.io import DatasetReader, MemoryFile
from rasterio.mask import mask as rio_mask
from rasterio.windows import transform as rio_window_transform

from rasterduck.core.geobox import GeoBox, affine_inverse, window_transform
from rasterduck.core.rasterize import geometry_mask
from rasterduck.core.window import (
    TilePart,
    Window,
    geometry_window,
    geometry_windows,
    point_pixel,
    tiles_for_window,
)
from rasterduck.errors import GeometryError

Transform = tuple[float, float, float, float, float, float]
NODATA = -1
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@contextmanager
def dataset(t: Transform, width: int, height: int, bands: int = 1) -> Iterator[DatasetReader]:
    """A real GeoTIFF in memory whose pixel values are distinct, so any misplaced pixel shows."""
    data = np.arange(bands * height * width, dtype=np.int32).reshape(bands, height, width) + 1
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype="int32",
                   transform=Affine(*t), crs="EPSG:32633", nodata=NODATA)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
        with mem.open() as src:
            yield src


def random_grid(rng: np.random.Generator) -> tuple[Transform, int, int]:
    a = float(rng.choice([1.0, 0.5, 10.0, 30.0, 0.1, 0.3, 1 / 3, 8.983152841195215e-05]))
    e = -a * float(rng.choice([1.0, 1.0, 2.0, 0.7])) if rng.random() < 0.75 else a  # north-up / south-up
    c = float(rng.choice([0.0, 0.25, 0.3, 100000.1, 500000.0, -180.0, 12.345, 699960.0]))
    f = float(rng.choice([0.0, 0.75, 0.3, 4000000.7, 5000000.0, 90.0, -3.3]))
    return (a, 0.0, c, 0.0, e, f), int(rng.integers(1, 40)), int(rng.integers(1, 40))


def random_aoi(rng: np.random.Generator, t: Transform, w: int, h: int) -> shapely.Geometry:
    """AOIs inside, across the edges, around and outside the raster; vertices often on grid lines."""
    a, b, c, d, e, f = t
    mode = int(rng.integers(0, 4))

    def coord(v: float) -> float:
        if mode == 1:
            return float(round(v))  # exactly on pixel boundaries
        if mode == 2:
            return round(v * 2) / 2
        if mode == 3:
            return round(v) + float(rng.choice([1e-9, -1e-9, 1e-12, -1e-12]))
        return v

    span = float(rng.choice([2, 5, 50]))
    n = int(rng.integers(3, 9))
    cols = [coord(float(rng.uniform(-span, w + span))) for _ in range(n)]
    rows = [coord(float(rng.uniform(-span, h + span))) for _ in range(n)]
    pts = [(c + x * a + y * b, f + x * d + y * e) for x, y in zip(cols, rows, strict=True)]
    kind = rng.random()
    if kind < 0.3:
        return shapely.box(min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts),
                           max(p[1] for p in pts))
    if kind < 0.45:
        hull = shapely.MultiPoint(pts).convex_hull
        if hull.geom_type == "Polygon":
            hole = shapely.affinity.scale(hull, 0.5, 0.5)
            return shapely.Polygon(hull.exterior.coords, [hole.exterior.coords])
    if kind < 0.6:
        other = shapely.box(*shapely.MultiPoint(pts[:2]).buffer(abs(a)).bounds)
        return shapely.MultiPolygon([shapely.Polygon(pts), other])
    return shapely.Polygon(pts)


def rio_window(src: DatasetReader, geom: shapely.Geometry) -> Window | None:
    """rasterio's window as `mask(crop=True)` computes it, or None where it raises."""
    try:
        win = rio_geometry_window(src, [geom])
    except WindowError:
        return None
    assert all(float(v).is_integer() for v in (win.col_off, win.row_off, win.width, win.height))
    return Window(int(win.col_off), int(win.row_off), int(win.width), int(win.height))


@pytest.mark.parametrize("seed", range(6))
def test_geometry_window_matches_rasterio(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    misses = 0
    for _ in range(12):
        t, w, h = random_grid(rng)
        with dataset(t, w, h) as src:
            for _ in range(40):
                g = random_aoi(rng, t, w, h)
                expected = rio_window(src, g)
                assert geometry_window(g, t, w, h) == expected, (t, w, h, g.wkt)
                misses += expected is None
    assert misses > 0  # the cases do include AOIs that miss the raster


@pytest.mark.parametrize("seed", range(6))
def test_geometry_windows_equal_geometry_window(seed: int) -> None:
    """The vectorised batch form gives, per geometry, what geometry_window gives (and rasterio), with
    empty geometries (None) and non-finite ones (the same GeometryError) in their own slots."""
    rng = np.random.default_rng(900 + seed)
    for _ in range(8):
        t, w, h = random_grid(rng)
        geoms = [random_aoi(rng, t, w, h) for _ in range(40)]
        geoms[5] = shapely.Polygon()
        geoms[9] = shapely.Polygon([(0, 0), (math.inf, 0), (1, 1)])
        got = geometry_windows(geoms, t, w, h)
        for g, win in zip(geoms, got, strict=True):
            try:
                expected = geometry_window(g, t, w, h)
            except GeometryError as exc:
                assert isinstance(win, GeometryError) and str(win) == str(exc)
                continue
            assert win == expected, (t, w, h, g.wkt)
        assert got[5] is None and isinstance(got[9], GeometryError)
    assert geometry_windows([], (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), 4, 4) == []


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("all_touched", [False, True])
def test_cropped_mask_matches_rasterio_mask(seed: int, all_touched: bool) -> None:
    """Window, window transform and mask together give `rasterio.mask.mask(crop=True, filled=True)`."""
    rng = np.random.default_rng(900 + seed)
    for _ in range(8):
        t, w, h = random_grid(rng)
        with dataset(t, w, h, bands=2) as src:
            data = src.read()
            for _ in range(15):
                g = random_aoi(rng, t, w, h)
                win = geometry_window(g, t, w, h)
                if win is None:
                    with pytest.raises(ValueError):
                        rio_mask(src, [g], crop=True, filled=True, all_touched=all_touched)
                    continue
                expected, expected_t = rio_mask(src, [g], crop=True, filled=True, all_touched=all_touched)
                wt = window_transform(t, win.col_off, win.row_off)
                m = geometry_mask(g, win.shape, wt, all_touched=all_touched)
                block = data[:, win.row_off : win.row_stop, win.col_off : win.col_stop]
                got = np.where(m, block, NODATA)
                assert wt == tuple(expected_t)[:6], (t, g.wkt)
                assert got.shape == expected.shape and np.array_equal(got, expected), (t, w, h, g.wkt)


def test_window_edge_cases() -> None:
    t: Transform = (1.0, 0.0, 0.0, 0.0, -1.0, 10.0)
    with dataset(t, 10, 10) as src:
        cases = [
            shapely.box(10.0, 0.0, 12.0, 10.0),  # touches the right edge only: misses
            shapely.box(-2.0, 0.0, 0.0, 10.0),  # touches the left edge only: misses
            shapely.box(0.0, 10.0, 10.0, 11.0),  # touches the top edge only: misses
            shapely.box(2.0, 3.0, 2.0, 3.0),  # a point-like box on a corner: empty window
            shapely.box(-5.0, -5.0, 15.0, 15.0),  # covers everything: clipped
            shapely.box(2.5, 2.5, 2.6, 2.6),  # inside one pixel
            shapely.box(3.0, 3.0, 5.0, 6.0),  # on pixel boundaries exactly
        ]
        for g in cases:
            assert geometry_window(g, t, 10, 10) == rio_window(src, g), g.wkt
    assert geometry_window(shapely.box(10.0, 0.0, 12.0, 10.0), t, 10, 10) is None
    assert geometry_window(shapely.box(-5.0, -5.0, 15.0, 15.0), t, 10, 10) == Window(0, 0, 10, 10)
    assert geometry_window(shapely.box(3.0, 3.0, 5.0, 6.0), t, 10, 10) == Window(3, 4, 2, 3)
    assert geometry_window(shapely.Polygon(), t, 10, 10) is None


def test_geometry_collection_window_is_the_window_of_its_parts() -> None:
    # rasterio 1.4.4 takes a GeometryCollection's bounds in world units (its `_bounds` drops the
    # transform for collections), which is a bug; we give the window of the parts instead.
    t: Transform = (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    parts = [shapely.box(500100.0, 3999500.0, 500200.0, 3999800.0), shapely.box(500455.0, 3999105.0, 500460.0, 3999110.0)]
    with dataset(t, 100, 100) as src:
        expected = rio_window(src, shapely.MultiPolygon(parts))
    assert expected == Window(10, 20, 36, 70)
    assert geometry_window(shapely.GeometryCollection(parts), t, 100, 100) == expected


@pytest.mark.parametrize("t", [(0.5, 0.1, 100.0, -0.05, -0.5, 200.0), (0.3, -0.03, 12.345, 0.1, 0.3, 0.3),
                               (1 / 3, 0.1, 699960.0, 0.2, -1 / 3, 5000000.0)])
def test_geometry_window_on_rotated_grid_matches_rasterio(t: Transform) -> None:
    rng = np.random.default_rng(42)
    with dataset(t, 30, 20) as src:
        for _ in range(300):
            g = random_aoi(rng, t, 30, 20)
            assert geometry_window(g, t, 30, 20) == rio_window(src, g), g.wkt


# ----------------------------------------------------------------------------------------------
# Points


@pytest.mark.parametrize("seed", range(3))
def test_point_pixel_matches_dataset_index_and_sample(seed: int) -> None:
    rng = np.random.default_rng(77 + seed)
    for _ in range(10):
        t, w, h = random_grid(rng)
        a, _, c, _, e, f = t
        with dataset(t, w, h) as src:
            data = src.read(1)
            pts = []
            for _ in range(60):
                col = float(rng.choice([rng.integers(-2, w + 2), rng.integers(-2, w + 2) + 0.5,
                                        rng.uniform(-2, w + 2)]))
                row = float(rng.choice([rng.integers(-2, h + 2), rng.integers(-2, h + 2) + 0.5,
                                        rng.uniform(-2, h + 2)]))
                pts.append((c + col * a, f + row * e))  # many exactly on pixel edges and corners
            inside = []
            for x, y in pts:
                row_i, col_i = point_pixel(x, y, t)
                assert (row_i, col_i) == tuple(int(v) for v in src.index(x, y)), (t, x, y)
                if 0 <= row_i < h and 0 <= col_i < w:
                    inside.append(((x, y), data[row_i, col_i]))
            if inside:
                sampled = list(src.sample([p for p, _ in inside], indexes=1))
                assert [int(s[0]) for s in sampled] == [int(v) for _, v in inside]


def test_point_pixel_on_exact_edges() -> None:
    t: Transform = (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    assert point_pixel(500000.0, 4000000.0, t) == (0, 0)
    assert point_pixel(500010.0, 3999990.0, t) == (1, 1)  # a corner belongs to the pixel right-below
    assert point_pixel(499999.99, 4000000.01, t) == (-1, -1)


# ----------------------------------------------------------------------------------------------
# Affine arithmetic


def test_affine_inverse_and_window_transform_are_bitwise_rasterio() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        t = tuple(float(v) for v in rng.uniform(-1e6, 1e6, 6))
        if rng.random() < 0.7:
            t = (t[0] / 1e5, 0.0, t[2], 0.0, -abs(t[4]) / 1e5, t[5])
        assert affine_inverse(t) == tuple(~Affine(*t))[:6]  # type: ignore[arg-type]
        col, row = int(rng.integers(0, 5000)), int(rng.integers(0, 5000))
        expected = rio_window_transform(rasterio.windows.Window(col, row, 3, 3), Affine(*t))
        assert window_transform(t, col, row) == tuple(expected)[:6]  # type: ignore[arg-type]


def test_geobox() -> None:
    t: Transform = (0.3, 0.0, 12.345, 0.0, -0.3, 90.0)
    with dataset(t, 17, 11) as src:
        box = GeoBox(17, 11, t, "EPSG:32633")
        assert box.shape == (11, 17)
        assert box.bounds() == tuple(src.bounds)
        crop = box.crop(3, 4, 5, 6)
        assert crop.transform == tuple(src.window_transform(rasterio.windows.Window(3, 4, 5, 6)))[:6]
        assert (crop.width, crop.height, crop.crs) == (5, 6, "EPSG:32633")
    assert GeoBox(1, 1, Affine(*t)).transform == t
    with pytest.raises(ValueError):
        GeoBox(-1, 1, t)


def test_window_intersection() -> None:
    a = Window(2, 3, 10, 5)
    assert a.intersection(Window(0, 0, 5, 5)) == Window(2, 3, 3, 2)
    assert a.intersection(Window(12, 3, 4, 4)) is None  # touching is not overlapping
    assert a.intersection(a) == a
    assert (a.row_stop, a.col_stop, a.shape) == (8, 12, (5, 10))


# ----------------------------------------------------------------------------------------------
# Tile plans


TILE_CASES = [
    # (window, tile w, tile h, image w, image h, expected parts)
    pytest.param(Window(0, 0, 256, 256), 256, 256, 1000, 800,
                 [TilePart(0, 0, 0, 255, 0, 255, 0, 0)], id="one-full-tile"),
    pytest.param(Window(10, 20, 5, 7), 256, 256, 1000, 800,
                 [TilePart(0, 0, 20, 26, 10, 14, 0, 0)], id="inside-one-tile"),
    pytest.param(Window(250, 250, 10, 10), 256, 256, 1000, 800,
                 [TilePart(0, 0, 250, 255, 250, 255, 0, 0), TilePart(0, 1, 250, 255, 0, 3, 0, 6),
                  TilePart(1, 0, 0, 3, 250, 255, 6, 0), TilePart(1, 1, 0, 3, 0, 3, 6, 6)], id="four-tiles"),
    pytest.param(Window(990, 790, 10, 10), 256, 256, 1000, 800,
                 [TilePart(3, 3, 22, 31, 222, 231, 0, 0)], id="bottom-right-edge-tile"),
    pytest.param(Window(0, 0, 100, 50), 512, 512, 100, 50,
                 [TilePart(0, 0, 0, 49, 0, 99, 0, 0)], id="tile-larger-than-image"),
    pytest.param(Window(30, 10, 40, 20), 512, 512, 100, 50,
                 [TilePart(0, 0, 10, 29, 30, 69, 0, 0)], id="oversize-tile-partial"),
    pytest.param(Window(0, 5, 100, 3), 100, 4, 100, 10,
                 [TilePart(1, 0, 1, 3, 0, 99, 0, 0)], id="strips"),
    pytest.param(Window(0, 3, 100, 6), 100, 4, 100, 10,
                 [TilePart(0, 0, 3, 3, 0, 99, 0, 0), TilePart(1, 0, 0, 3, 0, 99, 1, 0),
                  TilePart(2, 0, 0, 0, 0, 99, 5, 0)], id="strips-with-short-last"),
    pytest.param(Window(16, 0, 1, 1), 16, 16, 17, 17,
                 [TilePart(0, 1, 0, 0, 0, 0, 0, 0)], id="single-pixel-in-padded-edge-tile"),
]


@pytest.mark.parametrize(("window", "tw", "th", "iw", "ih", "expected"), TILE_CASES)
def test_tiles_for_window(window: Window, tw: int, th: int, iw: int, ih: int, expected: list[TilePart]) -> None:
    parts = tiles_for_window(window, tw, th, iw, ih)
    assert parts == expected
    # The parts tile the window exactly once.
    cover = np.zeros(window.shape, dtype=int)
    for p in parts:
        cover[p.window_row : p.window_row + p.last_row - p.first_row + 1,
              p.window_col : p.window_col + p.last_col - p.first_col + 1] += 1
        assert p.rows_needed == p.last_row + 1 <= th
    assert (cover == 1).all()


def test_tiles_for_window_covers_random_windows_exactly() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        iw, ih = int(rng.integers(1, 700)), int(rng.integers(1, 700))
        tw, th = int(rng.choice([16, 64, 256, 512, 1024])), int(rng.choice([1, 16, 64, 256, 512]))
        c0, r0 = int(rng.integers(0, iw)), int(rng.integers(0, ih))
        win = Window(c0, r0, int(rng.integers(1, iw - c0 + 1)), int(rng.integers(1, ih - r0 + 1)))
        image = np.arange(ih * iw).reshape(ih, iw)
        out = np.full(win.shape, -1)
        for p in tiles_for_window(win, tw, th, iw, ih):
            tile = np.full((th, tw), -2)  # stored full size, padding beyond the image
            part = image[p.tile_row * th : (p.tile_row + 1) * th, p.tile_col * tw : (p.tile_col + 1) * tw]
            tile[: part.shape[0], : part.shape[1]] = part
            block = tile[p.first_row : p.last_row + 1, p.first_col : p.last_col + 1]
            out[p.window_row : p.window_row + block.shape[0], p.window_col : p.window_col + block.shape[1]] = block
        assert np.array_equal(out, image[win.row_off : win.row_stop, win.col_off : win.col_stop])
        assert math.ceil(win.height / th) + 1 >= len({p.tile_row for p in tiles_for_window(win, tw, th, iw, ih)})


def test_tiles_for_window_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        tiles_for_window(Window(0, 0, 10, 10), 0, 256, 100, 100)
    with pytest.raises(ValueError):
        tiles_for_window(Window(95, 0, 10, 10), 256, 256, 100, 100)
    assert tiles_for_window(Window(0, 0, 0, 10), 256, 256, 100, 100) == []
