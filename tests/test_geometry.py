"""AOI parsing (every accepted form, and the malformed ones) and CRS moves against pyproj vertex by vertex."""

from __future__ import annotations

import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyproj
import pytest
import shapely
from duckdb.sqltypes import BIGINT

from rasterduck.core.geometry import (
    check_area_of_use,
    get_transformer,
    to_shapely,
    to_shapely_list,
    to_shapely_nullable_list,
    transform_geometry,
    wkb_array_to_shapely,
)
from rasterduck.errors import GeometryError

POLY = shapely.Polygon([(13.0, 47.0), (13.2, 47.0), (13.2, 47.1), (13.0, 47.1)],
                       [[(13.05, 47.02), (13.1, 47.02), (13.1, 47.05), (13.05, 47.02)]])


class GeoArrowWkb(pa.ExtensionType):
    """The `geoarrow.wkb` extension type, as GeoArrow-aware producers attach it."""

    def __init__(self) -> None:
        super().__init__(pa.binary(), "geoarrow.wkb")

    def __arrow_ext_serialize__(self) -> bytes:
        return b"{}"

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> GeoArrowWkb:
        return cls()


class HasGeoInterface:
    @property
    def __geo_interface__(self) -> dict[str, object]:
        return {"type": "Point", "coordinates": (1.0, 2.0)}


@pytest.mark.parametrize(
    "value",
    [
        POLY,
        POLY.wkb,
        bytearray(POLY.wkb),
        memoryview(POLY.wkb),
        shapely.to_wkb(POLY, byte_order=0),  # big-endian
        POLY.wkb_hex,
        POLY.wkt,
        shapely.geometry.mapping(POLY),
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(POLY)},
    ],
    ids=["shapely", "wkb", "bytearray", "memoryview", "wkb-big-endian", "hex", "wkt", "geojson", "feature"],
)
def test_each_input_kind_gives_the_same_polygon(value: object) -> None:
    g = to_shapely(value)
    assert g.equals_exact(POLY, tolerance=0)
    assert to_shapely_list(value)[0].equals_exact(POLY, tolerance=0)


def test_box_point_and_geo_interface() -> None:
    assert to_shapely((1.0, 2.0, 3.0, 4.0)).equals(shapely.box(1, 2, 3, 4))
    assert to_shapely(np.array([1, 2, 3, 4])).equals(shapely.box(1, 2, 3, 4))
    assert to_shapely([5, 6]).equals(shapely.Point(5, 6))
    assert to_shapely(HasGeoInterface()).equals(shapely.Point(1, 2))
    assert len(to_shapely_list([(0, 0, 1, 1), (2, 2, 3, 3)])) == 2
    with pytest.raises(GeometryError):
        to_shapely((3.0, 0.0, 1.0, 1.0))  # minx > maxx
    with pytest.raises(GeometryError):
        to_shapely((0.0, 0.0, np.nan, 1.0))


def test_extended_and_iso_wkb() -> None:
    ewkb = shapely.to_wkb(shapely.set_srid(POLY, 4326), include_srid=True, flavor="extended")
    assert to_shapely(ewkb).equals_exact(POLY, tolerance=0)
    iso_z = shapely.to_wkb(shapely.Point(1, 2, 3), flavor="iso")
    assert iso_z[1:5] == (1001).to_bytes(4, "little")
    assert to_shapely(iso_z).equals(shapely.Point(1, 2, 3))


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x01",
        POLY.wkb[:20],  # truncated
        b"\x01\x03\x00\x00\x00\xff\xff\xff\x7f",  # absurd ring count
        b"\x02" + POLY.wkb[1:],  # not a byte-order marker (e.g. DuckDB spatial's internal blob)
        b"\x01\x63\x00\x00\x00" + bytes(16),  # unknown geometry type
        "POLYGON((0 0, 1 0",
        "not a geometry",
        {"type": "Polygon"},
        {"type": "Feature", "geometry": None},
        12.5,
        object(),
    ],
)
def test_malformed_input_raises_geometry_error(bad: object) -> None:
    with pytest.raises(GeometryError):
        to_shapely(bad)


@pytest.mark.parametrize(
    "empty",
    [shapely.Polygon(), shapely.Polygon().wkb, "POLYGON EMPTY", "GEOMETRYCOLLECTION EMPTY",
     {"type": "MultiPolygon", "coordinates": []}],
)
def test_empty_geometry_raises_geometry_error(empty: object) -> None:
    with pytest.raises(GeometryError, match="empty"):
        to_shapely(empty)


def test_null_handling() -> None:
    with pytest.raises(GeometryError):
        to_shapely(None)
    with pytest.raises(GeometryError, match="AOI 1 is NULL"):
        to_shapely_list([POLY, None])
    assert to_shapely_nullable_list([POLY, None])[1] is None


@pytest.mark.parametrize("arrow_type", [pa.binary(), pa.large_binary(), pa.binary_view()])
def test_arrow_wkb_arrays(arrow_type: pa.DataType) -> None:
    geoms = [POLY, shapely.Point(1, 2), shapely.box(0, 0, 1, 1)]
    arr = pa.array([g.wkb for g in geoms] + [None], type=arrow_type)
    out = wkb_array_to_shapely(arr)
    assert [g.wkt if g is not None else None for g in out] == [g.wkt for g in geoms] + [None]
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2)])
    assert [g.wkt if g is not None else None for g in to_shapely_nullable_list(chunked)] == (
        [g.wkt for g in geoms] + [None]
    )


def test_arrow_scalar() -> None:
    assert to_shapely(pa.scalar(POLY.wkb, type=pa.binary())).equals_exact(POLY, tolerance=0)
    with pytest.raises(GeometryError):
        to_shapely(pa.scalar(None, type=pa.binary()))


def test_geoarrow_wkb_extension_array() -> None:
    storage = pa.array([POLY.wkb, shapely.Point(3, 4).wkb], type=pa.binary())
    arr = pa.ExtensionArray.from_storage(GeoArrowWkb(), storage)
    assert [g.wkt for g in to_shapely_list(arr)] == [POLY.wkt, "POINT (3 4)"]


def test_arrow_array_with_a_bad_entry_names_it() -> None:
    arr = pa.array([POLY.wkb, b"\x01\x03\x00"], type=pa.binary())
    with pytest.raises(GeometryError):
        wkb_array_to_shapely(arr)
    with pytest.raises(GeometryError, match="empty"):
        wkb_array_to_shapely(pa.array([shapely.Polygon().wkb]))
    with pytest.raises(GeometryError):
        wkb_array_to_shapely(pa.array([1, 2]))


def test_duckdb_geometry_reaches_python_as_wkb() -> None:
    """DuckDB 2.0's GEOMETRY: a plain fetch and an arrow UDF argument both carry ISO WKB."""
    con = duckdb.connect()
    wkt = "POLYGON ((13 47, 13.2 47, 13.2 47.1, 13 47.1, 13 47))"
    ((value,),) = con.sql(f"SELECT '{wkt}'::GEOMETRY").fetchall()
    assert to_shapely(value).equals(shapely.from_wkt(wkt))
    seen: list[shapely.Geometry | None] = []

    def udf(col: pa.ChunkedArray) -> pa.Array:
        parsed = to_shapely_nullable_list(col)
        seen.extend(parsed)
        return pa.array([None if g is None else len(shapely.get_coordinates(g)) for g in parsed], pa.int64())

    con.create_function("n_coords", udf, [duckdb.sqltype("GEOMETRY")], BIGINT, type="arrow",
                        null_handling="special")
    rows = con.sql(
        f"SELECT n_coords(g) FROM (VALUES ('{wkt}'::GEOMETRY), ('POINT Z (1 2 3)'::GEOMETRY), (NULL)) t(g)"
    ).fetchall()
    assert rows == [(5,), (1,), (None,)]
    assert seen[0] is not None and seen[0].equals(shapely.from_wkt(wkt))
    assert seen[1] is not None and seen[1].has_z


# ----------------------------------------------------------------------------------------------
# CRS moves


@pytest.mark.parametrize(
    ("src", "dst"),
    [(4326, "EPSG:32633"), ("EPSG:4326", "EPSG:3857"), ("EPSG:32633", 4326), (4326, pyproj.CRS.from_epsg(3035))],
)
def test_transform_geometry_equals_pyproj_vertex_by_vertex(src: object, dst: object) -> None:
    g = shapely.MultiPolygon([POLY, shapely.box(14.0, 48.0, 14.3, 48.2)])
    if src == "EPSG:32633":
        g = transform_geometry(g, 4326, src)  # type: ignore[arg-type]
    out = transform_geometry(g, src, dst)  # type: ignore[arg-type]
    tr = pyproj.Transformer.from_crs(pyproj.CRS.from_user_input(src), pyproj.CRS.from_user_input(dst),
                                     always_xy=True)
    coords = shapely.get_coordinates(g)
    ex, ey = tr.transform(coords[:, 0], coords[:, 1])
    got = shapely.get_coordinates(out)
    assert np.array_equal(got[:, 0], ex) and np.array_equal(got[:, 1], ey)
    assert out.geom_type == g.geom_type
    assert [len(shapely.get_rings(p)) for p in out.geoms] == [2, 1]  # holes kept


def test_transformer_is_cached_and_same_crs_is_a_no_op() -> None:
    assert get_transformer(4326, "EPSG:32633") is get_transformer("EPSG:4326", "EPSG:32633")
    assert get_transformer(4326, "EPSG:4326") is None
    assert transform_geometry(POLY, 4326, "EPSG:4326") is POLY


def _utm_codes() -> list[int]:
    return [base + zone for base in (32600, 32700) for zone in range(1, 61)]


def test_wgs84_utm_moves_equal_pyproj_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """EPSG:4326 <-> WGS 84 / UTM (all 120 zones) and UTM <-> UTM skip PROJ's database, with PROJ's own
    pipeline: every coordinate equals Transformer.from_crs's bit for bit, unprojectable ones included."""
    rng = np.random.default_rng(7)
    lon = np.concatenate([rng.uniform(-180, 180, 400), [0.0, 179.999, -180.0, 12.0, 13.0, 500.0]])
    lat = np.concatenate([rng.uniform(-85, 85, 400), [0.0, 84.0, -80.0, 90.0, -90.0, 95.0]])
    oracle = {}
    codes = _utm_codes()
    pairs = [(4326, c) for c in codes] + [(c, 4326) for c in codes] + [(32632, 32633), (32733, 32601), (32760, 32660)]
    for a, b in pairs:
        oracle[a, b] = pyproj.Transformer.from_crs(f"EPSG:{a}", f"EPSG:{b}", always_xy=True)
    geometry_module = sys.modules[get_transformer.__module__]
    geometry_module._transformer.cache_clear()

    def no_database(*_a: object, **_k: object) -> None:
        raise AssertionError("PROJ's database was used")

    monkeypatch.setattr(pyproj.Transformer, "from_crs", no_database)
    for (a, b), ref in oracle.items():
        x, y = (lon, lat) if a == 4326 else ref_inverse_points(a, lon, lat)
        tr = get_transformer(a, f"epsg:{b}" if b % 2 else b)  # keys in any case
        assert tr is not None
        got, want = tr.transform(x, y), ref.transform(x, y)
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(np.asarray(g), np.asarray(w), equal_nan=True), (a, b)
    assert get_transformer("EPSG:32632", 32632) is None
    geometry_module._transformer.cache_clear()


def ref_inverse_points(code: int, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projected points of a UTM zone (from lon/lat near it, and the same far away)."""
    zone_lon = (code % 100) * 6 - 183
    tr = pyproj.Transformer.from_pipeline(
        f"+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad +step +proj=utm +zone={code % 100} "
        f"+ellps=WGS84{' +south' if code // 100 == 327 else ''}")
    near_lon = zone_lon + (lon % 10.0) - 5.0
    x, y = tr.transform(np.concatenate([near_lon, lon]), np.concatenate([lat, lat]))
    return np.asarray(x), np.asarray(y)


def test_untransformable_aoi_raises_geometry_error() -> None:
    bad = shapely.box(47.0, 95.0, 48.0, 96.0)  # "latitudes" beyond the pole
    with pytest.raises(GeometryError):
        transform_geometry(bad, 4326, "EPSG:32633")
    with pytest.raises(GeometryError):
        transform_geometry(POLY, 4326, "EPSG:999999")


def test_check_area_of_use() -> None:
    lon_lat = shapely.box(13.0, 47.0, 13.1, 47.1)
    lat_lon = shapely.box(47.0, 13.0, 47.1, 13.1)  # the same AOI with the axes swapped
    assert check_area_of_use(lon_lat, 4326) is None
    assert check_area_of_use(lon_lat, 4326, "EPSG:32633") is None
    msg = check_area_of_use(lat_lon, 4326, "EPSG:32633")
    assert msg is not None and "area of use" in msg and "EPSG:32633" in msg
    msg = check_area_of_use(shapely.box(13.0, 91.0, 13.1, 92.0), 4326)
    assert msg is not None and "swapped" in msg
    utm = transform_geometry(lon_lat, 4326, "EPSG:32633")
    assert check_area_of_use(utm, "EPSG:32633", 4326) is None


def test_transform_geometries_equals_one_by_one() -> None:
    """One PROJ call for many AOIs gives what transform_geometry gives each; an AOI PROJ cannot move gets
    the same GeometryError in its slot and does not spoil the others."""
    from rasterduck.core.geometry import transform_geometries

    rng = np.random.default_rng(5)
    geoms = [shapely.Point(11 + rng.random(), 48 + rng.random()).buffer(0.01 + 0.02 * rng.random(), 3 + i % 5)
             for i in range(40)]
    geoms.insert(7, shapely.box(-171, -10, -169, 10))  # the far side of an orthographic view: not representable
    ortho = "+proj=ortho +lat_0=48 +lon_0=11 +datum=WGS84 +units=m"
    got = transform_geometries(geoms, "EPSG:4326", ortho)
    for g, m in zip(geoms, got, strict=True):
        try:
            want = transform_geometry(g, "EPSG:4326", ortho)
        except GeometryError as exc:
            assert isinstance(m, GeometryError) and str(m) == str(exc)
            continue
        assert not isinstance(m, GeometryError)
        assert np.array_equal(shapely.get_coordinates(m), shapely.get_coordinates(want))
    assert sum(isinstance(m, GeometryError) for m in got) == 1
    assert transform_geometries(geoms[:3], "EPSG:4326", "EPSG:4326") == geoms[:3]
    assert transform_geometries([], "EPSG:4326", ortho) == []
