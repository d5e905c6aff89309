"""AOI masks against rasterio.features.geometry_mask(invert=True) (GDAL's rasteriser) as the oracle.

The cases are chosen to hit GDAL's tie rules: vertices on pixel centres and corners, edges running
through centres and along cell boundaries, vertices a hair (1e-9 .. 1e-2 px) off a boundary, thin
slivers, tiny and huge polygons, holes, overlapping multipolygon parts, on grids with fractional
origins, north-up, south-up and rotated, with all_touched both ways.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import shapely
import shapely.affinity
from affine import Affine
from rasterio.features import geometry_mask as rio_geometry_mask

import rasterduck.core.rasterize as rasterize
from rasterduck.core.geobox import gdal_inverse, window_transform
from rasterduck.core.rasterize import geometry_mask, geometry_masks
from rasterduck.errors import GeometryError

Transform = tuple[float, float, float, float, float, float]


def oracle(geom: shapely.Geometry, shape: tuple[int, int], t: Transform, all_touched: bool) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio warns about empty shapes it skips
        return rio_geometry_mask([geom], out_shape=shape, transform=Affine(*t), all_touched=all_touched, invert=True)


def assert_same(geom: shapely.Geometry, shape: tuple[int, int], t: Transform, all_touched: bool) -> None:
    expected = oracle(geom, shape, t, all_touched)
    got = geometry_mask(geom, shape, t, all_touched=all_touched)
    assert got.dtype == bool and got.shape == shape
    if not np.array_equal(got, expected):
        diff = np.argwhere(got != expected)[:10].tolist()
        pytest.fail(f"mask differs at (row, col) {diff}\n t={t} shape={shape} all_touched={all_touched}\n{geom.wkt}")


# ----------------------------------------------------------------------------------------------
# Case generators (seeded, so a failure names a reproducible case)

SCALES = [1.0, 0.5, 10.0, 30.0, 0.1, 2.5e-4, 0.3, 1 / 3, 8.983152841195215e-05]
ORIGINS_X = [0.0, 0.25, 0.3, 100000.1, 500000.0, -180.0, 12.345, 699960.0]
ORIGINS_Y = [0.0, 0.75, 0.3, 4000000.7, 5000000.0, 90.0, -3.3, 5300040.0]
NUDGES = [1e-9, -1e-9, 1e-5, -1e-5, 9e-5, 1e-4, -1e-4, 0.0099, 0.01, -0.01]


def random_transform(rng: np.random.Generator, rotated: bool = False) -> Transform:
    a = float(rng.choice(SCALES))
    e = -a if rng.random() < 0.7 else a  # north-up mostly, south-up sometimes
    e *= float(rng.choice([1.0, 1.0, 2.0, 0.5, 0.7]))
    b = d = 0.0
    if rotated:
        b = float(rng.choice([0.1, -0.2, 0.05])) * a
        d = float(rng.choice([0.1, -0.3, 0.02])) * abs(e)
    return (a, b, float(rng.choice(ORIGINS_X)), d, e, float(rng.choice(ORIGINS_Y)))


def snap(rng: np.random.Generator, v: float, mode: int) -> float:
    """Put a pixel coordinate on a centre, corner, half or quarter grid, or a hair off a boundary."""
    if mode == 1:
        return round(v * 2) / 2
    if mode == 2:
        return math.floor(v) + 0.5
    if mode == 3:
        return float(round(v))
    if mode == 4:
        return round(v) + float(rng.choice(NUDGES))
    if mode == 5:
        return round(v * 4) / 4
    return v


def to_world(t: Transform, col: float, row: float) -> tuple[float, float]:
    a, b, c, d, e, f = t
    return (c + col * a + row * b, f + col * d + row * e)


def random_polygon(rng: np.random.Generator, t: Transform, w: int, h: int) -> shapely.Geometry:
    mode = int(rng.integers(0, 6))
    span = float(rng.choice([1, 3, 3, 10, 1000]))  # 1000: huge polygons reaching far outside

    def pt() -> tuple[float, float]:
        col = snap(rng, float(rng.uniform(-span, w + span)), mode)
        row = snap(rng, float(rng.uniform(-span, h + span)), mode)
        return to_world(t, col, row)

    kind = rng.random()
    if kind < 0.25:  # axis-aligned rectangle in pixel space, either orientation
        c0, c1 = (snap(rng, float(rng.uniform(-2, w + 2)), mode) for _ in range(2))
        r0, r1 = (snap(rng, float(rng.uniform(-2, h + 2)), mode) for _ in range(2))
        ring = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
        if rng.random() < 0.5:
            ring = ring[::-1]
        return shapely.Polygon([to_world(t, x, y) for x, y in ring])
    if kind < 0.35:  # thin sliver
        p0, p1 = pt(), pt()
        eps = float(rng.choice([1e-9, 1e-6, 1e-3, 0.05])) * abs(t[0])
        return shapely.Polygon([p0, p1, (p1[0] + eps, p1[1] + eps), p0])
    if kind < 0.45:  # tiny, smaller than a pixel
        x0, y0 = pt()
        s = float(rng.choice([0.01, 0.2, 0.6])) * abs(t[0])
        return shapely.Polygon([(x0, y0), (x0 + s, y0), (x0 + s, y0 + s * 1.3), (x0, y0)])
    pts = [pt() for _ in range(int(rng.integers(3, 12)))]
    if rng.random() < 0.3:  # with a hole
        hull = shapely.MultiPoint(pts).convex_hull
        if hull.geom_type == "Polygon":
            inner = shapely.affinity.scale(hull, 0.5, 0.4)
            return shapely.Polygon(hull.exterior.coords, [inner.exterior.coords])
    return shapely.Polygon(pts)  # often self-intersecting: GDAL's even-odd rule still applies


def random_case(rng: np.random.Generator, rotated: bool) -> tuple[shapely.Geometry, tuple[int, int], Transform]:
    t = random_transform(rng, rotated)
    w, h = int(rng.integers(1, 25)), int(rng.integers(1, 25))
    g = random_polygon(rng, t, w, h)
    if rng.random() < 0.2:  # parts that may overlap: GDAL burns each part on its own
        g = shapely.MultiPolygon([g, random_polygon(rng, t, w, h)])
    return g, (h, w), t


@pytest.mark.parametrize("seed", range(8))
def test_random_polygons_match_gdal(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    for _ in range(300):
        g, shape, t = random_case(rng, rotated=False)
        for all_touched in (False, True):
            assert_same(g, shape, t, all_touched)


@pytest.mark.parametrize("seed", range(2))
def test_random_polygons_on_rotated_grids_match_gdal(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    for _ in range(300):
        g, shape, t = random_case(rng, rotated=True)
        for all_touched in (False, True):
            assert_same(g, shape, t, all_touched)


@pytest.mark.parametrize("seed", range(2))
def test_random_points_lines_and_collections_match_gdal(seed: int) -> None:
    rng = np.random.default_rng(3000 + seed)
    for _ in range(300):
        t = random_transform(rng, rotated=bool(rng.random() < 0.3))
        w, h = int(rng.integers(1, 21)), int(rng.integers(1, 21))
        mode = int(rng.integers(0, 6))

        def pt() -> tuple[float, float]:
            col = snap(rng, float(rng.uniform(-3, w + 3)), mode)  # noqa: B023
            row = snap(rng, float(rng.uniform(-3, h + 3)), mode)  # noqa: B023
            return to_world(t, col, row)  # noqa: B023

        kind = rng.random()
        if kind < 0.2:
            g = shapely.Point(pt())
        elif kind < 0.35:
            g = shapely.MultiPoint([pt() for _ in range(int(rng.integers(1, 6)))])
        elif kind < 0.6:
            g = shapely.LineString([pt() for _ in range(int(rng.integers(2, 6)))])
        elif kind < 0.75:
            g = shapely.MultiLineString([[pt() for _ in range(int(rng.integers(2, 4)))] for _ in range(2)])
        else:
            g = shapely.GeometryCollection(
                [shapely.Point(pt()), shapely.LineString([pt(), pt()]), random_polygon(rng, t, w, h)]
            )
        for all_touched in (False, True):
            assert_same(g, (h, w), t, all_touched)


def test_window_sized_aois_match_gdal() -> None:
    """Many-vertex AOIs on 256x256 grids, the size the reader works at."""
    rng = np.random.default_rng(7)
    t = (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    for _ in range(40):
        n = int(rng.integers(5, 200))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(300, 1500, n)
        g = shapely.Polygon(np.c_[501280 + r * np.cos(ang), 3998720 + r * np.sin(ang)])
        for all_touched in (False, True):
            assert_same(g, (256, 256), t, all_touched)


@pytest.mark.parametrize("shape", [(40, 2000), (20000, 400), (700, 513)], ids=["wide", "tall", "just-wide"])
def test_large_grids_match_gdal(shape: tuple[int, int]) -> None:
    """Wide grids burn spans one by one, tall ones in row chunks: both must still equal GDAL."""
    rng = np.random.default_rng(shape[0])
    h, w = shape
    t = (1.0, 0.0, 0.25, 0.0, -1.0, h + 0.75)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 300))
    r = rng.uniform(0.2, 0.5, 300)
    g = shapely.Polygon(np.c_[w / 2 + r * np.cos(ang) * w, h / 2 + r * np.sin(ang) * h])
    g = g.difference(shapely.box(w * 0.4, h * 0.4, w * 0.45, h * 0.6))
    for all_touched in (False, True):
        assert_same(g, shape, t, all_touched)


# ----------------------------------------------------------------------------------------------
# Hand-made ties, each a rule of GDAL's


IDENTITY: Transform = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
NORTH_UP: Transform = (1.0, 0.0, 0.0, 0.0, -1.0, 6.0)


@pytest.mark.parametrize("t", [IDENTITY, NORTH_UP], ids=["south-up", "north-up"])
@pytest.mark.parametrize("reverse", [False, True], ids=["ccw", "cw"])
@pytest.mark.parametrize("all_touched", [False, True])
def test_square_with_centres_on_every_edge(t: Transform, reverse: bool, all_touched: bool) -> None:
    # Edges run through the centres of rows/columns 0.5 and 2.5 in pixel space; GDAL burns the left
    # and top/bottom rows by its own rules, and ring orientation must not change the result.
    ring = [to_world(t, x, y) for x, y in [(0.5, 0.5), (2.5, 0.5), (2.5, 2.5), (0.5, 2.5), (0.5, 0.5)]]
    g = shapely.Polygon(ring[::-1] if reverse else ring)
    assert_same(g, (4, 4), t, all_touched)


@pytest.mark.parametrize("all_touched", [False, True])
def test_pixel_aligned_square(all_touched: bool) -> None:
    g = shapely.box(1.0, 1.0, 3.0, 3.0)
    assert_same(g, (5, 5), IDENTITY, all_touched)
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:3, 1:3] = True  # all_touched does not add the cells merely touching the boundary
    assert np.array_equal(geometry_mask(g, (5, 5), IDENTITY, all_touched=all_touched), expected)


@pytest.mark.parametrize("all_touched", [False, True])
def test_polygon_with_hole_and_vertices_on_centres(all_touched: bool) -> None:
    outer = [(0.5, 0.5), (9.5, 0.5), (9.5, 9.5), (0.5, 9.5), (0.5, 0.5)]
    hole = [(3.5, 3.5), (3.5, 6.5), (6.5, 6.5), (6.5, 3.5), (3.5, 3.5)]
    for t in (IDENTITY, NORTH_UP, (0.5, 0.0, 0.25, 0.0, -0.5, 5.75)):
        g = shapely.Polygon([to_world(t, *p) for p in outer], [[to_world(t, *p) for p in hole]])
        assert_same(g, (11, 11), t, all_touched)


@pytest.mark.parametrize("all_touched", [False, True])
def test_overlapping_multipolygon_parts_are_a_union(all_touched: bool) -> None:
    a = shapely.box(0.2, 0.2, 6.3, 6.3)
    b = shapely.box(2.1, 2.1, 8.7, 8.7)
    g = shapely.MultiPolygon([a, b])
    assert_same(g, (10, 10), IDENTITY, all_touched)
    mask = geometry_mask(g, (10, 10), IDENTITY, all_touched=all_touched)
    assert mask[4, 4]  # inside both parts: an even-odd fill of the two rings would drop it


def test_sliver_between_pixel_centres_burns_nothing() -> None:
    g = shapely.Polygon([(0.6, 0.0), (0.9, 0.0), (0.9, 5.0), (0.6, 5.0)])
    assert_same(g, (5, 5), IDENTITY, False)
    assert not geometry_mask(g, (5, 5), IDENTITY).any()
    assert_same(g, (5, 5), IDENTITY, True)
    assert geometry_mask(g, (5, 5), IDENTITY, all_touched=True)[:, 0].all()


def test_aoi_covering_the_grid_and_beyond() -> None:
    g = shapely.box(-1e7, -1e7, 1e7, 1e7)
    for all_touched in (False, True):
        assert_same(g, (7, 9), NORTH_UP, all_touched)
        assert geometry_mask(g, (7, 9), NORTH_UP, all_touched=all_touched).all()


def test_aoi_outside_the_grid() -> None:
    g = shapely.box(100.0, 100.0, 101.0, 101.0)
    for all_touched in (False, True):
        assert_same(g, (4, 4), IDENTITY, all_touched)
        assert not geometry_mask(g, (4, 4), IDENTITY, all_touched=all_touched).any()


def test_empty_geometry_burns_nothing() -> None:
    g = shapely.Polygon()
    assert_same(g, (3, 3), IDENTITY, False)
    assert not geometry_mask(g, (3, 3), IDENTITY).any()


def test_affine_object_is_accepted() -> None:
    g = shapely.box(0.3, 0.3, 2.6, 1.7)
    t = Affine(0.5, 0.0, 0.1, 0.0, -0.5, 3.0)
    assert np.array_equal(geometry_mask(g, (6, 6), t), oracle(g, (6, 6), tuple(t)[:6], False))


def test_gdal_inverse_is_gdal_arithmetic() -> None:
    # GDALInvGeoTransform's no-rotation branch: 1/a and -c/a, not e/(a*e) as the affine package has.
    a, c = 0.3, 12.345
    inv = gdal_inverse((a, 0.0, c, 0.0, -a, 7.0))
    assert inv[0] == 1.0 / a and inv[2] == -c / a and inv[4] == 1.0 / -a and inv[5] == -7.0 / -a


def test_bad_inputs_raise_geometry_error() -> None:
    with pytest.raises(GeometryError):
        geometry_mask("POLYGON((0 0, 1 0, 1 1, 0 0))", (3, 3), IDENTITY)  # type: ignore[arg-type]
    with pytest.raises(GeometryError):
        geometry_mask(shapely.box(0, 0, 1, 1), (3, 3), (0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    with pytest.raises(GeometryError):
        geometry_mask(shapely.Polygon([(0, 0), (np.inf, 0), (1, 1), (0, 0)]), (3, 3), IDENTITY)
    with pytest.raises(ValueError):
        geometry_mask(shapely.box(0, 0, 1, 1), (0, 3), IDENTITY)


# ----------------------------------------------------------------------------------------------
# geometry_masks: the batched fill must equal GDAL and geometry_mask item by item

Item = tuple[shapely.Geometry, tuple[int, int], Transform]


def assert_batch_same(items: list[Item], all_touched: bool) -> None:
    got = geometry_masks(items, all_touched=all_touched)
    assert len(got) == len(items)
    for k, ((g, shape, t), mask) in enumerate(zip(items, got, strict=True)):
        assert mask.dtype == bool and mask.shape == shape
        expected = oracle(g, shape, t, all_touched)
        single = geometry_mask(g, shape, t, all_touched=all_touched)
        if not (np.array_equal(mask, expected) and np.array_equal(single, expected)):
            diff = np.argwhere(mask != expected)[:10].tolist()
            pytest.fail(f"item {k}: batch differs from GDAL at (row, col) {diff}; single equal to GDAL: "
                        f"{np.array_equal(single, expected)}\n t={t} shape={shape} all_touched={all_touched}\n{g.wkt}")


def field_item(rng: np.random.Generator) -> Item:
    """A field-sized AOI (4-8 vertices, some concave, some with a hole) on a window of a UTM grid."""
    grid: Transform = (10.0, 0.0, 699960.0, 0.0, -10.0, 5300040.0)
    col_off, row_off = (int(v) for v in rng.integers(0, 10000, 2))
    w, h = int(rng.integers(3, 40)), int(rng.integers(3, 40))
    t = window_transform(grid, col_off, row_off)
    n = int(rng.integers(4, 9))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.3, 0.75, n) * min(w, h) / 2 * rng.choice([1.0, 1.0, 1.6])  # 1.6: crosses the window
    cx, cy = w / 2 + rng.uniform(-1, 1), h / 2 + rng.uniform(-1, 1)
    mode = int(rng.integers(0, 6))
    ring = [to_world(t, snap(rng, cx + r * math.cos(a), mode), snap(rng, cy + r * math.sin(a), mode))
            for a, r in zip(ang, rad, strict=True)]
    g = shapely.Polygon(ring)
    if rng.random() < 0.2 and g.is_valid:
        g = shapely.Polygon(ring, [shapely.affinity.scale(g, 0.3, 0.3).exterior.coords])
    return g, (h, w), t


def special_items(rng: np.random.Generator) -> list[Item]:
    """Hand-made ties and odd inputs that must survive being batched with other items."""
    items: list[Item] = []
    for t in (IDENTITY, NORTH_UP, (0.5, 0.0, 0.25, 0.0, -0.5, 5.75)):
        outer = [(0.5, 0.5), (9.5, 0.5), (9.5, 9.5), (0.5, 9.5), (0.5, 0.5)]  # edges on centre rows/cols
        hole = [(3.5, 3.5), (3.5, 6.5), (6.5, 6.5), (6.5, 3.5), (3.5, 3.5)]
        items.append((shapely.Polygon([to_world(t, *p) for p in outer], [[to_world(t, *p) for p in hole]]),
                      (11, 11), t))
        items.append((shapely.Polygon([to_world(t, *p) for p in outer[::-1]]), (11, 11), t))
    items += [
        (shapely.box(1.0, 1.0, 3.0, 3.0), (5, 5), IDENTITY),  # aligned to the grid
        (shapely.MultiPolygon([shapely.box(0.2, 0.2, 6.3, 6.3), shapely.box(2.1, 2.1, 8.7, 8.7)]), (10, 10), IDENTITY),
        (shapely.Polygon(), (3, 3), IDENTITY),
        (shapely.MultiPolygon(), (2, 4), NORTH_UP),
        (shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.Polygon()]), (3, 2), IDENTITY),
        (shapely.box(-1e7, -1e7, 1e7, 1e7), (7, 9), NORTH_UP),
        (shapely.box(100.0, 100.0, 101.0, 101.0), (4, 4), IDENTITY),
        (shapely.Polygon([(0.6, 0.0), (0.9, 0.0), (0.9, 5.0), (0.6, 5.0)]), (5, 5), IDENTITY),  # sliver
        (shapely.box(0.3, 0.3, 2.6, 1.7), (1, 1), IDENTITY),
        # not batched: a point, a line, a collection and a window too large for the batched fill
        (shapely.Point(1.5, 2.5), (4, 4), IDENTITY),
        (shapely.LineString([(0.2, 0.3), (3.7, 2.9)]), (4, 4), IDENTITY),
        (shapely.GeometryCollection([shapely.Point(0.5, 0.5), shapely.box(1.2, 1.2, 3.3, 2.8)]), (4, 4), IDENTITY),
        (shapely.box(3.3, 2.1, 290.7, 301.2), (310, 300), IDENTITY),
    ]
    order = rng.permutation(len(items))
    return [items[i] for i in order]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("all_touched", [False, True])
def test_batch_of_mixed_polygons_matches_gdal(seed: int, all_touched: bool) -> None:
    rng = np.random.default_rng(4000 + seed)
    items: list[Item] = []
    for _ in range(150):
        r = rng.random()
        if r < 0.4:
            items.append(random_case(rng, rotated=False))
        elif r < 0.55:
            items.append(random_case(rng, rotated=True))
        else:
            items.append(field_item(rng))
    items += special_items(rng)
    order = rng.permutation(len(items))
    assert_batch_same([items[i] for i in order], all_touched)


@pytest.mark.parametrize("all_touched", [False, True])
def test_batch_split_into_many_chunks(monkeypatch: pytest.MonkeyPatch, all_touched: bool) -> None:
    """Chunks of the flat buffer end in the middle of the batch: every chunk must be filled on its own."""
    monkeypatch.setattr(rasterize, "_CHUNK_PIXELS", 700)
    rng = np.random.default_rng(11)
    assert_batch_same([field_item(rng) for _ in range(60)] + special_items(rng), all_touched)


def test_batch_of_polygons_never_goes_through_geometry_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparisons above must test the batched fill, not a per-item fallback."""
    rng = np.random.default_rng(12)
    items = [field_item(rng) for _ in range(50)] + [random_case(rng, rotated=True) for _ in range(50)]
    expected = [oracle(g, s, t, False) for g, s, t in items]

    def refuse(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("geometry_mask called for a batchable item")

    monkeypatch.setattr(rasterize, "geometry_mask", refuse)
    got = geometry_masks(items)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_batch_edge_cases() -> None:
    assert geometry_masks([]) == []
    g, shape, t = shapely.box(0.3, 0.3, 2.6, 1.7), (6, 6), (0.5, 0.0, 0.1, 0.0, -0.5, 3.0)
    for all_touched in (False, True):
        assert_batch_same([(g, shape, t)], all_touched)
    # an affine.Affine transform, a list shape; each mask is its own writeable array
    masks = geometry_masks([(g, [6, 6], Affine(*t)), (g, (6, 6), t)])  # type: ignore[list-item]
    assert np.array_equal(masks[0], oracle(g, (6, 6), t, False))
    assert masks[0].flags.writeable and not np.shares_memory(masks[0], masks[1])


def test_batch_errors_are_those_of_geometry_mask() -> None:
    good = (shapely.box(0, 0, 1, 1), (3, 3), IDENTITY)
    with pytest.raises(GeometryError):
        geometry_masks([good, (shapely.Polygon([(0, 0), (np.inf, 0), (1, 1), (0, 0)]), (3, 3), IDENTITY)])
    with pytest.raises(GeometryError):
        geometry_masks([good, (shapely.box(0, 0, 1, 1), (3, 3), (0.0, 0.0, 0.0, 0.0, 0.0, 0.0))])
    with pytest.raises(GeometryError):
        geometry_masks([good, ("POLYGON((0 0, 1 0, 1 1, 0 0))", (3, 3), IDENTITY)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        geometry_masks([good, (shapely.box(0, 0, 1, 1), (0, 3), IDENTITY)])
