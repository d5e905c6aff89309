"""RasterAccessor.load_bands and Collection.read: every output shape and AOI form, against rasterio.

Pixels are checked against `rasterio.mask.mask` on the served file; xarray coordinates against rasterio's
pixel-centre coordinates (`rasterio.transform.xy`); concurrency against the test server's in-flight peak.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.mask import mask as rio_mask
from rasterio.transform import from_origin
from rasterio.transform import xy as rio_xy

import rasterduck
from rasterduck import ReadResult
from rasterduck.core.accessor import RasterAccessor
from rasterduck.core.outputs import aoi_list
from rasterduck.errors import BandNotFoundError, PixelBudgetExceeded
from rasterduck.io.backend import DefaultBackend
from rasterduck.io.loop import run_sync

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

CRS = "EPSG:32633"
ORIGIN = (500000.0, 5100000.0)
WHEN = dt.datetime(2024, 5, 17, 10, 30, tzinfo=dt.UTC)


def write(path: Path, *, count: int = 2, nodata: float | None = 0, block: int = 128, width: int = 900,
          height: int = 700, compress: str = "DEFLATE") -> Path:
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    data = rng.integers(1, 9000, (count, height, width)).astype("uint16")
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint16",
                       crs=CRS, transform=from_origin(*ORIGIN, 10.0, 10.0), tiled=True, blockxsize=block,
                       blockysize=block, compress=compress, nodata=nodata) as dst:
        dst.write(data)
    return path


def lonlat_aois() -> list[shapely.Geometry]:
    """Three polygons inside the raster and one far outside, in lon/lat."""
    to_ll = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    out = []
    for c0, r0, c1, r1 in [(20.3, 30.7, 140.2, 90.9), (300.5, 400.1, 420.8, 610.4), (700.2, 10.6, 899.0, 77.7),
                           (5000, 5000, 5100, 5100)]:
        xs = ORIGIN[0] + np.array([c0, c1, c1 - 7, c0 + 3]) * 10.0
        ys = ORIGIN[1] - np.array([r0, r0 + 5, r1, r1 - 2]) * 10.0
        lon, lat = to_ll.transform(xs, ys)
        out.append(shapely.Polygon(np.column_stack([lon, lat])))
    return out


def oracle(path: Path, geom_ll: shapely.Geometry) -> np.ndarray:
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    local = shapely.transform(geom_ll, lambda x, y: to_utm.transform(x, y), interleaved=False)
    with rasterio.open(path) as src:
        return rio_mask(src, [local], crop=True, filled=True, nodata=src.nodata or 0, indexes=[1, 2])[0]


@pytest.fixture
def scene(tmp_path: Path, make_server: Callable[..., Any]) -> tuple[RasterAccessor, Path, Any]:
    path = write(tmp_path / "scene.tif")
    srv = make_server()
    coll = rasterduck.build_collection([srv.url("scene.tif")], ids=["scene-1"], datetimes=[WHEN])
    return next(coll.iterate_rasters()), path, srv


def test_results_output_equals_rasterio(scene: tuple[RasterAccessor, Path, Any]) -> None:
    acc, path, _srv = scene
    aois = lonlat_aois()
    results = run_sync(acc.load_bands(aois, ["b1", "b2"], output="results"))
    assert results[3] is None
    for g, r in zip(aois[:3], results[:3], strict=True):
        assert isinstance(r, ReadResult) and r.dtype == "uint16" and r.data.dtype == np.uint16
        assert np.array_equal(r.data, oracle(path, g))
        assert r.crs == CRS and r.bands == ["b1", "b2"] and r.record_id == "scene-1"


class _GeoArrowPolygon(pa.ExtensionType):
    """A stand-in for geoarrow-pyarrow's polygon type (native coordinates, separated x/y)."""

    def __init__(self) -> None:
        coords = pa.struct([("x", pa.float64()), ("y", pa.float64())])
        super().__init__(pa.list_(pa.list_(coords)), "geoarrow.polygon")

    def __arrow_ext_serialize__(self) -> bytes:
        return b"{}"

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _GeoArrowPolygon:
        return cls()


class _GeoArrowWkb(pa.ExtensionType):
    def __init__(self) -> None:
        super().__init__(pa.binary(), "geoarrow.wkb")

    def __arrow_ext_serialize__(self) -> bytes:
        return b"{}"

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _GeoArrowWkb:
        return cls()


def _native(polys: list[shapely.Polygon]) -> pa.Array:
    rings = [[{"x": float(x), "y": float(y)} for x, y in p.exterior.coords] for p in polys]
    storage = pa.array([[r] for r in rings], type=_GeoArrowPolygon().storage_type)
    return pa.ExtensionArray.from_storage(_GeoArrowPolygon(), storage)


def test_every_aoi_form_reads_the_same(scene: tuple[RasterAccessor, Path, Any]) -> None:
    """GeoArrow WKB and native arrays (also chunked and sliced), shapely, WKB bytes, WKT and bbox tuples."""
    acc, _path, _srv = scene
    aois = lonlat_aois()[:3]
    wkb = [shapely.to_wkb(g) for g in aois]
    forms: dict[str, Any] = {
        "shapely": aois,
        "wkb bytes": wkb,
        "wkb array": pa.array(wkb, pa.binary()),
        "geoarrow.wkb": pa.ExtensionArray.from_storage(_GeoArrowWkb(), pa.array(wkb, pa.binary())),
        "geoarrow.polygon": _native(aois),
        "chunked native": pa.chunked_array([_native(aois[:1]), _native(aois[1:])]),
        "sliced native": _native([aois[0], *aois, aois[2]]).slice(1, 3),
        "wkt": [g.wkt for g in aois],
    }
    expected = run_sync(acc.load_bands(aois, ["b1"], output="results"))
    for name, form in forms.items():
        assert [g.equals_exact(a, 0) for g, a in zip(aoi_list(form), aois, strict=True)] == [True] * 3, name
        got = run_sync(acc.load_bands(form, ["b1"], output="results"))
        for e, g in zip(expected, got, strict=True):
            assert isinstance(g, ReadResult) and isinstance(e, ReadResult)
            assert np.array_equal(g.data, e.data), name
    box = aois[0].bounds
    (r,) = run_sync(acc.load_bands(box, ["b1"], output="results"))
    assert isinstance(r, ReadResult) and np.array_equal(r.data[0], oracle(_path, shapely.box(*box))[0])
    (p,) = run_sync(acc.load_bands([aois[1].centroid.coords[0]], ["b1"], output="results"))
    assert isinstance(p, ReadResult) and p.data.shape == (1, 1, 1)


def test_xarray_output(scene: tuple[RasterAccessor, Path, Any]) -> None:
    """One variable per band, (time, geometry, y, x), native dtype, pixel-centre coordinates of the raster
    grid over the union of the AOI windows, spatial_ref with the CRS WKT and GeoTransform."""
    acc, path, _srv = scene
    aois = lonlat_aois()
    ds = run_sync(acc.load_bands(aois, ["b1", "b2"]))
    assert list(ds.data_vars) == ["b1", "b2"] and ds["b1"].dims == ("time", "geometry", "y", "x")
    assert ds["b1"].dtype == np.uint16 and list(ds["geometry"].values) == [1, 2, 3]
    assert ds["time"].values[0] == np.datetime64("2024-05-17T10:30:00", "ns")
    results = run_sync(acc.load_bands(aois, ["b1", "b2"], output="results"))
    with rasterio.open(path) as src:
        t = src.transform
    rows = np.arange(ds.sizes["y"])
    cols = np.arange(ds.sizes["x"])
    gt = [float(v) for v in ds["spatial_ref"].attrs["GeoTransform"].split()]
    r0, c0 = round((t.f - gt[3]) / 10.0), round((gt[0] - t.c) / 10.0)
    xs, _ = rio_xy(t, np.full(cols.shape, r0), c0 + cols)
    _, ys = rio_xy(t, r0 + rows, np.full(rows.shape, c0))
    assert np.array_equal(ds["x"].values, np.asarray(xs)) and np.array_equal(ds["y"].values, np.asarray(ys))
    assert pyproj.CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]) == pyproj.CRS.from_user_input(CRS)
    for k, (g, r) in enumerate(zip(aois[:3], results[:3], strict=True)):
        assert isinstance(r, ReadResult) and r.window is not None
        ref = oracle(path, g)
        for b, band in enumerate(["b1", "b2"]):
            plane = ds[band].values[0, k]
            rr, cc = r.window.row_off - r0, r.window.col_off - c0
            assert np.array_equal(plane[rr : rr + r.height, cc : cc + r.width], ref[b])
            outside = np.ones(plane.shape, bool)
            outside[rr : rr + r.height, cc : cc + r.width] = False
            assert (plane[outside] == 0).all()
    assert ds["b1"].attrs["_FillValue"] == 0


def test_geodataframe_output(scene: tuple[RasterAccessor, Path, Any]) -> None:
    acc, path, _srv = scene
    aois = lonlat_aois()
    gdf = run_sync(acc.load_bands(aois, ["b1", "b2"], for_xarray=False))
    assert len(gdf) == 3 * 2 and str(gdf.crs) == "EPSG:4326"
    assert list(gdf["geometry_id"]) == [1, 1, 2, 2, 3, 3] and list(gdf["band"]) == ["b1", "b2"] * 3
    for _, row in gdf.iterrows():
        ref = oracle(path, aois[row["geometry_id"] - 1])[0 if row["band"] == "b1" else 1]
        assert np.array_equal(row["data"], ref) and row["data"].dtype == np.uint16
        assert row["record_id"] == "scene-1" and row["crs"] == CRS
        assert row["geometry"].equals(aois[row["geometry_id"] - 1])
        assert isinstance(row["transform"], tuple) and len(row["transform"]) == 6


def test_aois_in_the_raster_crs_and_target_crs(scene: tuple[RasterAccessor, Path, Any]) -> None:
    acc, path, _srv = scene
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", CRS, always_xy=True)
    local = [shapely.transform(g, lambda x, y: to_utm.transform(x, y), interleaved=False) for g in lonlat_aois()[:2]]
    got = run_sync(acc.load_bands(local, ["b1"], geometry_crs=32633, output="results", all_touched=True))
    with rasterio.open(path) as src:
        for g, r in zip(local, got, strict=True):
            ref = rio_mask(src, [g], crop=True, all_touched=True, filled=True, nodata=0, indexes=[1])[0]
            assert isinstance(r, ReadResult) and np.array_equal(r.data, ref)
    ds = run_sync(acc.load_bands(lonlat_aois()[:2], ["b1"], target_crs=3857))
    assert ds["b1"].dtype == np.uint16 and "Pseudo-Mercator" in ds["spatial_ref"].attrs["crs_wkt"]
    a = float(ds["spatial_ref"].attrs["GeoTransform"].split()[1])
    assert np.allclose(np.diff(ds["x"].values), a) and a == pytest.approx(10.0 / np.cos(np.radians(46.04)), rel=0.01)


def test_max_concurrent_bounds_requests_in_flight(tmp_path: Path, make_server: Callable[..., Any]) -> None:
    """Uncompressed tiles far apart: one request each; max_concurrent caps what the server sees at once."""
    path = write(tmp_path / "raw.tif", count=1, compress="NONE", block=256, width=2048, height=2048)
    srv = make_server(latency=0.03)
    acc = next(rasterduck.build_collection([srv.url(path.name)]).iterate_rasters())
    aois = []
    for tr in range(0, 8, 2):
        for tc in range(0, 8, 2):
            x, y = ORIGIN[0] + (tc * 256 + 10) * 10.0, ORIGIN[1] - (tr * 256 + 10) * 10.0
            aois.append(shapely.box(x, y - 100.0, x + 100.0, y))
    for limit in (3, 50):
        srv.reset()
        got = run_sync(acc.load_bands(aois, ["b1"], geometry_crs=CRS, max_concurrent=limit, output="results"))
        assert all(isinstance(r, ReadResult) for r in got)
        assert srv.requests == 16
        assert srv.peak_in_flight <= limit
        if limit == 3:
            assert srv.peak_in_flight == 3
        else:
            assert srv.peak_in_flight > 3


def test_collection_read_plans_all_records_together(tmp_path: Path, make_server: Callable[..., Any]) -> None:
    """Collection.read over three records (one elsewhere on Earth): one batch, only overlapping pairs,
    each tile fetched once, results tagged with record and AOI; target_crs puts them on one grid."""
    a, b = write(tmp_path / "a.tif"), write(tmp_path / "b.tif")
    far = tmp_path / "far.tif"
    with rasterio.open(a) as src:
        profile = src.profile
        profile["transform"] = Affine(10.0, 0, 200000.0, 0, -10.0, 1000000.0)
        with rasterio.open(far, "w", **profile) as dst:
            dst.write(src.read())
    srv = make_server()
    coll = rasterduck.build_collection([srv.url(p.name) for p in (a, b, far)])
    aois = lonlat_aois()
    srv.reset()
    results = coll.read(aois, ["b1", "b2"])
    assert [(r.geometry_index, r.record_id) for r in results] == [(i, rec) for i in range(3) for rec in ("a", "b")]
    hits = {p: srv.per_path.get(f"/{p}", 0) for p in ("a.tif", "b.tif", "far.tif")}
    assert hits["far.tif"] == 0 and hits["a.tif"] == hits["b.tif"] > 0
    for r in results:
        assert np.array_equal(r.data, oracle(tmp_path / f"{r.record_id}.tif", aois[r.geometry_index or 0]))
    warped = coll.read(aois[:2], ["b1"], target_crs=4326)
    for i in range(2):
        mine = [w for w in warped if w.geometry_index == i]
        assert len(mine) == 2 and mine[0].transform == mine[1].transform and mine[0].crs == "EPSG:4326"
    with pytest.raises(BandNotFoundError):
        coll.read(aois, ["nope"])


def test_xarray_refuses_a_union_over_the_budget(scene: tuple[RasterAccessor, Path, Any]) -> None:
    acc, _path, _srv = scene
    with pytest.raises(PixelBudgetExceeded, match="output='results'"):
        run_sync(acc.load_bands(lonlat_aois(), ["b1"], pixel_budget=200_000))


def test_custom_backend_is_used(scene: tuple[RasterAccessor, Path, Any]) -> None:
    """Any object with `read_ranges` plugs in (here a wrapper counting the calls around DefaultBackend)."""
    acc, path, _srv = scene
    inner = DefaultBackend()
    calls: list[int] = []

    class Counting:
        async def read_ranges(self, url: str, ranges: Any) -> list[bytes]:
            calls.append(len(ranges))
            return await inner.read_ranges(url, ranges)

    try:
        got = run_sync(acc.load_bands(lonlat_aois()[:1], ["b1", "b2"], backend=Counting(), output="results"))
    finally:
        run_sync(inner.close())
    assert calls and isinstance(got[0], ReadResult)
    assert np.array_equal(got[0].data, oracle(path, lonlat_aois()[0]))
