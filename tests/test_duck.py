"""The DuckDB surface against rasterio: load_bands and friends through real DuckDB and a real HTTP server.

Collections are built with `rasterduck.build_collection` over URLs of a local range server that serves
corpus files (uint16 cog.tif, float32 inverted_lat.tif, 3-band uint8 rgb_lzw.tif) and a generated
tiled int8 GeoTIFF with nodata. Every pixel answer is compared with `rasterio.mask.mask`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.affinity
from shapely.geometry.base import BaseGeometry

import rasterduck
from rasterduck.duck import types as dtypes

from .httpserver import RangeServer
from .test_duck_helpers import (
    CORPUS,
    aois_for,
    assert_result_matches,
    corpus_path,
    from_4326,
    rasterio_pixels,
    sql_aoi_values,
    to_4326,
    write_int8_tif,
    write_utm_tif,
)


@dataclass
class Coll:
    """One single-raster collection of the test site."""

    key: str
    path: Path  # the GeoTIFF on disk (oracle input)
    url: str
    parquet: Path
    dtype: str
    duck_type: str
    aois: list[BaseGeometry]
    record_id: str


@dataclass
class Site:
    server: RangeServer
    root: Path
    colls: dict[str, Coll]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("duck_site")
    files: dict[str, tuple[Path, str, str]] = {}
    for key, (rel, dtype, duck) in CORPUS.items():
        dst = root / Path(rel).name
        shutil.copyfile(corpus_path(rel), dst)
        files[key] = (dst, dtype, duck)
    files["i8"] = (write_int8_tif(root / "int8.tif"), "int8", "TINYINT")
    with RangeServer(root) as srv:
        colls = {}
        for key, (path, dtype, duck) in files.items():
            url = srv.url(path.name)
            coll = rasterduck.build_collection([url], bands=["red", "green", "blue"] if key == "rgb" else None)
            assert not coll.errors(), coll.errors()
            pq = coll.to_parquet(root / f"coll_{key}.parquet")
            rid = coll.to_arrow()["id"][0].as_py()
            colls[key] = Coll(key, path, url, pq, dtype, duck, aois_for(path), rid)
        yield Site(srv, root, colls)


def join_sql(coll: str, aois: list[BaseGeometry], bands: str = "['b1']", fn: str = "load_bands") -> str:
    """The README join: every AOI against every record it intersects."""
    return (f"SELECT aoi.id AS aoi_id, r.id AS rid, {fn}(r, aoi.geom, {bands}) AS px "
            f"FROM {coll} r JOIN {sql_aoi_values(aois)} ON raster_intersects(r, aoi.geom) ORDER BY aoi.id")


def to_arrow_table(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    """`.arrow()` of a relation (a Table in 2.x, a RecordBatchReader in 1.5)."""
    out = rel.arrow()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


# ---- the README join, three clients ---------------------------------------------------------------
@pytest.mark.parametrize("key", ["u16", "i8", "f32"])
def test_readme_join_equals_rasterio(site: Site, key: str) -> None:
    c = site.colls[key]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    q = join_sql("coll", c.aois)
    rows = con.execute(q).fetchall()
    [(typ,)] = con.execute(f"SELECT DISTINCT typeof(px) FROM ({q})").fetchall()
    assert f'"data" {c.duck_type}[][]' in typ
    got = {aoi_id: px for aoi_id, rid, px in rows}
    assert all(rid == c.record_id for _a, rid, _p in rows)
    hits = 0
    for i, g in enumerate(c.aois):
        expected = rasterio_pixels(c.path, g)
        if expected is None:
            assert got.get(i) is None  # no row (raster_intersects) or a NULL result
            continue
        hits += 1
        assert_result_matches(got[i], expected, c.dtype)
        assert got[i]["bands"] == ["b1"]
    assert hits >= 3


@pytest.mark.parametrize("key", ["i8", "u16"])
def test_join_through_df_and_arrow(site: Site, key: str) -> None:
    c = site.colls[key]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    q = join_sql("coll", c.aois)
    df = con.sql(q).df()
    table = to_arrow_table(con.sql(q))
    native = np.dtype(c.dtype)
    assert table.schema.field("px").type.field("data").type == pa.list_(pa.list_(pa.from_numpy_dtype(native)))
    by_df = {int(a): px for a, px in zip(df["aoi_id"], df["px"], strict=True)}
    by_arrow = {a: px for a, px in zip(table["aoi_id"].to_pylist(), table["px"], strict=True)}
    # the README's pandas form: unnest spreads the result over columns, and .df() then holds NumPy arrays
    # of the native dtype per cell (DuckDB gives a STRUCT column's lists as Python lists)
    call = "load_bands(r, aoi.geom, ['b1'])"
    spread = con.sql(q.replace(f"{call} AS px", f"unnest({call})")).df()
    assert list(spread.columns[-9:]) == ["bands", "height", "width", "transform", "crs", "dtype", "nodata",
                                         "data", "valid"]
    by_row = {int(row["aoi_id"]): row for _i, row in spread.iterrows()}
    for i, g in enumerate(c.aois):
        expected = rasterio_pixels(c.path, g)
        if expected is None:
            assert i not in by_df and i not in by_arrow
            assert i not in by_row or rasterduck.to_numpy(by_row[i]) is None
            continue
        row = by_row[i]
        assert isinstance(row["data"], np.ndarray) and isinstance(row["valid"], np.ndarray)
        assert all(isinstance(b, np.ndarray) and b.dtype == native for b in row["data"])
        assert row["valid"].dtype == np.bool_
        for cell in (by_df[i], by_arrow[i], row):
            arr = rasterduck.to_numpy(cell)
            assert arr.dtype == native
            np.testing.assert_array_equal(arr.data, expected["data"])
            np.testing.assert_array_equal(~arr.mask[0], expected["valid"])
        data, valid = rasterduck.to_numpy(by_arrow[i], masked=False)
        np.testing.assert_array_equal(valid, expected["valid"])
        np.testing.assert_array_equal(data, expected["data"])
    # a NULL result (the AOI misses the raster) spreads into a row of NULLs, which to_numpy gives as None
    far = shapely.box(-170.0, -80.0, -169.9, -79.9)
    [null_row] = [row for _i, row in con.sql(f"SELECT unnest({call.replace('aoi.geom', repr(far.wkt))}) "
                                             "FROM coll r").df().iterrows()]
    assert null_row[["data", "valid", "height"]].isna().all() and rasterduck.to_numpy(null_row) is None
    assert rasterduck.to_numpy(pa.scalar(None, table.schema.field("px").type)) is None


def test_multiband_record_and_macros(site: Site) -> None:
    c = site.colls["rgb"]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    g = c.aois[0]
    q = (f"SELECT px, band(px, 'green') AS g, masked_mean(px, 'red') AS mr, masked_min(px, 'red') AS lo, "
         f"masked_max(px, 'blue') AS hi, masked_sum(px, 'green') AS sg, valid_count(px) AS n, "
         f"ndvi(px, 'green', 'red') AS nd, mean_ndvi(px, 'green', 'red') AS mnd "
         f"FROM (SELECT load_bands(r, '{g.wkt}', ['red', 'green', 'blue']) AS px FROM coll r)")
    [(px, green, mr, lo, hi, sg, n, nd, mnd)] = con.execute(q).fetchall()
    expected = rasterio_pixels(c.path, g)
    assert expected is not None
    assert_result_matches(px, expected, "uint8")
    assert px["bands"] == ["red", "green", "blue"]
    valid = expected["valid"]
    red, grn, blu = (expected["data"][k].astype(np.float64) for k in range(3))
    np.testing.assert_array_equal(np.asarray(green).reshape(valid.shape), expected["data"][1])
    assert n == int(valid.sum()) > 0
    assert mr == pytest.approx(red[valid].mean())
    assert (lo, hi, sg) == (red[valid].min(), blu[valid].max(), grn[valid].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.where(valid & (grn + red != 0), (grn - red) / (grn + red), np.nan)
    got = np.array([np.nan if v is None else v for v in nd]).reshape(valid.shape)
    np.testing.assert_allclose(got, want, equal_nan=True)
    assert mnd == pytest.approx(np.nanmean(want))


# ---- types ---------------------------------------------------------------------------------------
def test_pixel_type_follows_attached_collections(site: Site) -> None:
    con = rasterduck.connect()
    g = site.colls["u16"].aois[0]

    def typ(fn: str, coll: str) -> str:
        [(t,)] = con.execute(f"SELECT typeof({fn}(r, '{g.wkt}', ['b1'])) FROM {coll} r LIMIT 1").fetchall()
        return str(t)

    con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{site.colls['u16'].parquet}')")
    assert '"data" DOUBLE[][]' in typ("load_bands", "raw")  # nothing attached yet
    rasterduck.attach(con, "u16", site.colls["u16"].parquet)
    assert '"data" USMALLINT[][]' in typ("load_bands", "u16")
    assert '"data" USMALLINT[][]' in typ("load_bands_safe", "u16") and '"error" VARCHAR' in typ("load_bands_safe", "u16")
    rasterduck.attach(con, "i8", site.colls["i8"].parquet)  # uint16 + int8 -> int32
    assert '"data" INTEGER[][]' in typ("load_bands", "u16")
    for dt, (duck, suffix) in dtypes.PIXEL_TYPES.items():
        if np.can_cast(np.uint16, dt, "safe"):
            assert f'"data" {duck}[][]' in typ(f"load_bands_{suffix}", "u16")
    # the promoted values are still the uint16 pixels, and dtype says what they were
    [(px,)] = con.execute(f"SELECT load_bands(r, '{g.wkt}', ['b1']) FROM u16 r").fetchall()
    assert_result_matches(px, rasterio_pixels(site.colls["u16"].path, g), "uint16")
    with pytest.raises(duckdb.Error, match="load_bands_u16"):
        con.execute(f"SELECT load_bands_u8(r, '{g.wkt}', ['b1']) FROM u16 r").fetchall()


def test_promotion_rule() -> None:
    assert dtypes.promote([]) == "float64"
    assert dtypes.promote(["uint16"]) == "uint16"
    assert dtypes.promote(["uint16", "int8"]) == "int32"
    assert dtypes.promote(["uint16", "float32"]) == "float32"
    assert dtypes.promote(["uint64", "int8"]) == "float64"
    assert dtypes.result_type("int8").count("TINYINT[][]") == 1


# ---- NULLs, errors, safe mode, budget ------------------------------------------------------------
def test_null_when_aoi_misses(site: Site) -> None:
    c = site.colls["u16"]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    far = c.aois[-1]
    assert rasterio_pixels(c.path, far) is None
    rows = con.execute(f"SELECT load_bands(r, '{far.wkt}', ['b1']), raster_intersects(r, '{far.wkt}'), "
                       f"zonal_stats(r, '{far.wkt}', 'b1') FROM coll r").fetchall()
    assert rows == [(None, False, None)]


def test_errors_name_record_band_url_and_safe_mode(site: Site) -> None:
    good = site.colls["u16"]
    srv = site.server
    coll = rasterduck.build_collection([good.url, srv.vurl("broken", good.path.name)])
    broken_url = srv.url("does-not-exist.tif")
    coll = coll.rewrite_hrefs({srv.vurl("broken", good.path.name): broken_url})
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", coll)
    ids = [r[0] for r in con.execute("SELECT id FROM coll ORDER BY id").fetchall()]
    broken_id = next(i for i in ids if i != good.record_id) if len(set(ids)) > 1 else ids[1]
    g = good.aois[0]
    with pytest.raises(duckdb.Error) as err:
        con.execute(f"SELECT load_bands(r, '{g.wkt}', ['b1']) FROM coll r").fetchall()
    msg = str(err.value)
    assert broken_url in msg and "'b1'" in msg and repr(broken_id) in msg
    rows = con.execute(f"SELECT * FROM (SELECT r.id, load_bands_safe(r, '{g.wkt}', ['b1']) AS px FROM coll r) "
                       "ORDER BY px.error IS NULL").fetchall()
    (bad_id, bad), (ok_id, ok) = rows
    assert bad["data"] is None and broken_url in bad["error"] and bad_id == broken_id
    assert ok["error"] is None and ok_id == good.record_id
    assert_result_matches({k: v for k, v in ok.items() if k != "error"}, rasterio_pixels(good.path, g), "uint16")
    with pytest.raises(duckdb.Error, match=r"band 'nir' not found"):
        con.execute(f"SELECT load_bands(r, '{g.wkt}', ['nir']) FROM coll r WHERE r.id = '{good.record_id}'").fetchall()


def test_pixel_budget(site: Site) -> None:
    c = site.colls["u16"]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    con.execute("SELECT rasterduck_set('pixel_budget', '1KB')").fetchall()
    with pytest.raises(duckdb.Error, match="budget"):
        con.execute(f"SELECT load_bands(r, '{c.aois[0].wkt}', ['b1']) FROM coll r").fetchall()
    con.execute("SELECT rasterduck_set('pixel_budget', '64MB')").fetchall()
    assert con.execute(f"SELECT load_bands(r, '{c.aois[0].wkt}', ['b1']) IS NOT NULL FROM coll r").fetchall() == [(True,)]


# ---- geometry forms ------------------------------------------------------------------------------
def test_geometry_forms_and_crs_argument(site: Site) -> None:
    c = site.colls["u16"]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    g = c.aois[2]  # the polygon with a hole
    native = from_4326(g, "EPSG:32621")
    forms = [(f"'{g.wkt}'::GEOMETRY", ""), (f"'{g.wkt}'", ""), (f"ST_AsWKB('{g.wkt}'::GEOMETRY)", ""),
             (f"from_hex('{shapely.to_wkb(g, hex=True)}')", ""), (f"'{native.wkt}'::GEOMETRY", ", 'EPSG:32621'"),
             (f"'{native.wkt}'", ", 32621")]
    expected = rasterio_pixels(c.path, g)
    for geom_sql, extra in forms:
        [(px,)] = con.execute(f"SELECT load_bands(r, {geom_sql}, ['b1']{extra}) FROM coll r").fetchall()
        assert_result_matches(px, expected, "uint16")


# ---- statistics and point values ----------------------------------------------------------------
def _inside(path: Path, g4326: BaseGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(pixel values of the crop, AOI mask) from rasterio for the AOI."""
    exp = rasterio_pixels(path, g4326)
    assert exp is not None
    with rasterio.open(path) as src:
        h, w = exp["valid"].shape
        inside = rasterio.features.geometry_mask([from_4326(g4326, str(src.crs))], (h, w),
                                                 rasterio.Affine(*exp["transform"]), invert=True)
    return exp["data"][0], inside


@pytest.mark.parametrize("key", ["u16", "i8"])
def test_zonal_stats_and_sedona_match_numpy(site: Site, key: str) -> None:
    c = site.colls[key]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    g = c.aois[0]
    if key == "i8":  # an AOI over the nodata stripe (rows 5-8, columns 10-29)
        with rasterio.open(c.path) as src:
            ring = [src.xy(r, col) for r, col in ((2, 7), (3, 26), (12, 22), (11, 9))]
            g = to_4326(shapely.Polygon(ring), str(src.crs))
    data, inside = _inside(c.path, g)
    exp = rasterio_pixels(c.path, g)
    assert exp is not None
    vals = data[exp["valid"]].astype(np.float64)
    every = data[inside].astype(np.float64)
    [(z, mean, mx3, cnt_all, allstats)] = con.execute(
        f"SELECT zonal_stats(r, '{g.wkt}', 'b1'), RS_ZonalStats(r, '{g.wkt}', 1, 'mean'), "
        f"RS_ZonalStats(r, '{g.wkt}', 'max'), RS_ZonalStats(r, '{g.wkt}', 1, 'count', false, false), "
        f"RS_ZonalStatsAll(r, '{g.wkt}') FROM coll r").fetchall()
    assert z["count"] == int(inside.sum()) and z["valid_count"] == vals.size > 0
    assert (z["min"], z["max"], z["sum"]) == (vals.min(), vals.max(), vals.sum())
    assert z["mean"] == pytest.approx(vals.mean()) and z["std"] == pytest.approx(vals.std())
    assert mean == pytest.approx(vals.mean()) and mx3 == vals.max()
    assert cnt_all == every.size
    uniq, counts = np.unique(vals, return_counts=True)
    assert allstats["median"] == np.median(vals) and allstats["mode"] == uniq[np.argmax(counts)]
    assert allstats["variance"] == pytest.approx(vals.var()) and allstats["count"] == vals.size
    if key == "i8":
        assert every.size > vals.size  # the AOI covers nodata pixels: excludeNoData made a difference


def test_pixel_values_and_rs_value(site: Site) -> None:
    c = site.colls["i8"]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    with rasterio.open(c.path) as src:
        band = src.read(1)
        pts_native = [src.xy(3, 4), src.xy(6, 15), src.xy(40, 60)]  # a value, a nodata pixel, another value
        crs = str(src.crs)
        nodata = src.nodata
    pts = [to_4326(shapely.Point(*p), crs) for p in pts_native]
    outside = shapely.Point(0.0, 0.0)
    for p, (row, col) in zip(pts, [(3, 4), (6, 15), (40, 60)], strict=True):
        [(vals, v1, vdef)] = con.execute(f"SELECT pixel_values(r, '{p.wkt}', ['b1']), RS_Value(r, '{p.wkt}', 1), "
                                         f"RS_Value(r, '{p.wkt}') FROM coll r").fetchall()
        want = None if band[row, col] == nodata else float(band[row, col])
        assert vals == [want] and v1 == want and vdef == want
    assert con.execute(f"SELECT pixel_values(r, '{outside.wkt}', ['b1']), RS_Value(r, '{outside.wkt}') "
                       "FROM coll r").fetchall() == [(None, None)]


def test_rs_dimensions_and_band_as_array(site: Site) -> None:
    con = rasterduck.connect()
    for key in ("u16", "rgb", "i8"):
        c = site.colls[key]
        rasterduck.attach(con, key, c.parquet)
        with rasterio.open(c.path) as src:
            want = (src.width, src.height, src.count, src.crs.to_epsg())
        got = con.execute(f"SELECT RS_Width(r), RS_Height(r), RS_NumBands(r), RS_SRID(r) FROM {key} r").fetchall()
        assert got == [want]
    with rasterio.open(site.colls["i8"].path) as src:
        band = src.read(1)
    [(arr,)] = con.execute("SELECT RS_BandAsArray(r, 1) FROM i8 r").fetchall()
    np.testing.assert_array_equal(np.asarray(arr), band.ravel().astype(np.float64))
    [(third,)] = con.execute("SELECT RS_BandAsArray(r, 3) FROM rgb r").fetchall()  # Sedona band 3 = blue
    with rasterio.open(site.colls["rgb"].path) as src:
        np.testing.assert_array_equal(np.asarray(third), src.read(3).ravel().astype(np.float64))


# ---- collections built in SQL --------------------------------------------------------------------
def test_read_cog_metadata_builds_a_collection_in_sql(site: Site) -> None:
    c = site.colls["u16"]
    con = rasterduck.connect()
    con.execute(f"""CREATE TABLE sqlcoll AS
        SELECT 'sql-cog' AS id, {{'b1': {{'href': url, 'band_index': 0}}}} AS assets,
               read_cog_crs(url) AS crs, read_cog_metadata(url) AS b1_metadata
        FROM (VALUES ('{c.url}')) v(url)""")
    [(meta, crs)] = con.execute("SELECT b1_metadata, crs FROM sqlcoll").fetchall()
    with rasterio.open(c.path) as src:
        assert (meta["image_width"], meta["image_height"], meta["dtype"]) == (src.width, src.height, src.dtypes[0])
        assert (meta["tile_height"], meta["tile_width"]) == src.block_shapes[0]
        t = src.transform
        assert meta["transform"] == [t.a, t.c, t.e, t.f]
        assert crs == f"EPSG:{src.crs.to_epsg()}"
    q = join_sql("sqlcoll", c.aois)
    rows = {a: px for a, _rid, px in con.execute(q).fetchall()}
    for i, g in enumerate(c.aois):
        expected = rasterio_pixels(c.path, g)
        if expected is None:
            assert i not in rows
        else:
            assert_result_matches(rows[i], expected, "uint16")


# ---- parallel scans ------------------------------------------------------------------------------
def test_multi_row_group_parquet_with_concurrent_calls(site: Site, tmp_path: Path) -> None:
    c = site.colls["u16"]
    urls = [site.server.vurl(f"s{k:03d}", c.path.name) for k in range(24)]
    coll = rasterduck.build_collection(urls)
    path = coll.to_parquet(tmp_path / "many.parquet", row_group_size=2)
    assert rasterio.open(c.path).count == 1
    con = rasterduck.connect()
    con.execute("SET threads = 4")
    rasterduck.attach(con, "many", path)
    threads: set[str] = set()
    lock = threading.Lock()

    def probe(ids: pa.ChunkedArray) -> pa.Array:
        with lock:
            threads.add(threading.current_thread().name)
        return pa.array([True] * len(ids))

    con.create_function("probe", probe, None, "BOOLEAN", type="arrow")  # type: ignore[arg-type]
    aois = [shapely.affinity.scale(g, 0.3, 0.3) for g in c.aois[:3]]  # small: this test is about threads
    q = (f"SELECT r.id, aoi.id, load_bands(r, aoi.geom, ['b1']) AS px, probe(r.id) FROM many r "
         f"JOIN {sql_aoi_values(aois)} ON raster_intersects(r, aoi.geom)")
    rows = con.execute(q).fetchall()
    assert len(rows) == 24 * 3
    expected = [rasterio_pixels(c.path, g) for g in aois]
    for _rid, aoi_id, px, _ in rows:
        assert_result_matches(px, expected[aoi_id], "uint16")
    assert len(threads) > 1, threads


def test_several_connections_cursors_and_python_threads_at_once(site: Site) -> None:
    c = site.colls["i8"]
    shared = rasterduck.connect()
    rasterduck.attach(shared, "coll", c.parquet)
    q = join_sql("coll", c.aois)
    expected = {i: rasterio_pixels(c.path, g) for i, g in enumerate(c.aois)}
    got: dict[int, Any] = {}

    def run(k: int) -> None:
        try:
            if k % 2:
                con = rasterduck.connect()
                rasterduck.attach(con, "coll", c.parquet)
            else:
                con = shared.cursor()
            got[k] = con.execute(q).fetchall()
        except BaseException as exc:
            got[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(got) == list(range(6))
    for rows in got.values():
        assert not isinstance(rows, BaseException), rows
        assert [a for a, _r, _p in rows] == [i for i, e in expected.items() if e is not None]
        for a, _rid, px in rows:
            assert_result_matches(px, expected[a], "int8")


# ---- access policy -------------------------------------------------------------------------------
def test_local_hrefs_need_allow_local(site: Site, tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    tif = shutil.copyfile(site.colls["i8"].path, a / "int8.tif")
    coll = rasterduck.build_collection([str(tif)], allow_local=True)
    inside = coll.to_parquet(a / "coll.parquet")
    elsewhere = coll.to_parquet(b / "coll.parquet")
    g = site.colls["i8"].aois[0]
    expected = rasterio_pixels(tif, g)
    q = f"SELECT load_bands(r, '{g.wkt}', ['b1']) FROM coll r"

    con = rasterduck.connect()
    rasterduck.attach(con, "coll", inside)
    with pytest.raises(duckdb.Error, match="local file access is not allowed"):
        con.execute(q).fetchall()
    rasterduck.attach(con, "coll", inside, allow_local=True)  # allows folder a
    assert_result_matches(con.execute(q).fetchall()[0][0], expected, "int8")

    con2 = rasterduck.connect()
    rasterduck.attach(con2, "coll", elsewhere, allow_local=True)  # allows folder b, the tif is in a
    with pytest.raises(duckdb.Error, match="outside the allowed roots"):
        con2.execute(q).fetchall()
    con3 = rasterduck.connect(allow_local=True)
    rasterduck.attach(con3, "coll", elsewhere)
    assert_result_matches(con3.execute(q).fetchall()[0][0], expected, "int8")


# ---- interrupts ----------------------------------------------------------------------------------
def test_interrupt_cancels_reads_in_flight(site: Site, tmp_path: Path) -> None:
    c = site.colls["u16"]
    with RangeServer(site.root) as slow:
        coll = rasterduck.build_collection([slow.url(c.path.name)])
        con = rasterduck.connect()
        rasterduck.attach(con, "coll", coll)
        slow.set_latency(60.0)
        box: dict[str, BaseException] = {}

        def run() -> None:
            try:
                con.execute(f"SELECT load_bands(r, '{c.aois[0].wkt}', ['b1']) FROM coll r").fetchall()
            except BaseException as exc:
                box["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        while slow.in_flight == 0 and t.is_alive():  # wait until a tile request is on the wire
            t.join(0.02)
        rasterduck.duck.interrupt(con)
        t.join(30)  # a hang guard only: without cancellation the read would wait 60 s
        assert not t.is_alive()
        assert "nterrupt" in str(box.get("error"))
        slow.set_latency(0.0)


def test_sample_collection_with_relative_hrefs() -> None:
    sample = Path(__file__).resolve().parents[1] / "examples" / "sample"
    con = rasterduck.connect()
    rasterduck.attach(con, "sample", sample / "collection.parquet")
    q = ("SELECT a.field_id, r.id, load_bands(r, a.wkt, ['b1']) AS px FROM sample r "
         f"JOIN read_csv('{sample / 'aois.csv'}') a ON raster_intersects(r, a.wkt) ORDER BY a.field_id")
    with pytest.raises(duckdb.Error, match="local file access is not allowed"):
        con.execute(q).fetchall()
    rasterduck.attach(con, "sample", sample / "collection.parquet", allow_local=True)
    rows = con.execute(q).fetchall()
    files = {"greenland-u16": "cog.tif", "quebec-u16": "web.tif"}
    assert [(f, rid) for f, rid, _ in rows] == [(1, "greenland-u16"), (2, "greenland-u16"), (3, "quebec-u16")]
    wkts = dict(con.execute(f"SELECT field_id, wkt FROM read_csv('{sample / 'aois.csv'}')").fetchall())
    for fid, rid, px in rows:
        assert_result_matches(px, rasterio_pixels(sample / "data" / files[rid], shapely.from_wkt(wkts[fid])), "uint16")


def test_reference_examples_run_on_the_sample() -> None:
    from rasterduck.duck.reference import FUNCTIONS, MACROS, help_text

    sample = Path(__file__).resolve().parents[1] / "examples" / "sample" / "collection.parquet"
    con = rasterduck.connect()
    rasterduck.attach(con, "sample", sample, allow_local=True)
    for entry in FUNCTIONS + MACROS:
        rows = con.execute(entry.example).fetchall()
        assert rows and any(v is not None for row in rows for v in row), entry.signature
        assert entry.example in help_text()
    registered = {r[0].lower() for r in con.execute("SELECT function_name FROM duckdb_functions()").fetchall()}
    for entry in FUNCTIONS + MACROS:
        for name in entry.signature.split("(")[0].replace("|", "/").split("/"):
            name = name.strip()
            if name and not name.startswith("_"):
                assert name.lower() in registered, name


def _two_dtype_record(root: Path, srv: RangeServer) -> Path:
    """A one-record collection with a uint16 band `a` and a float32 band `f` on one UTM grid (two files)."""
    rng = np.random.default_rng(11)
    hrefs = {}
    for band, dtype in (("a", "uint16"), ("f", "float32")):
        path = write_utm_tif(root / f"two_{band}.tif", (rng.random((48, 64)) * 5000).astype(dtype), nodata=0)
        hrefs[band] = srv.url(path.name)
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "two", "geometry": None,
            "properties": {"datetime": "2024-05-03T10:00:00Z"},
            "assets": {k: {"href": v, "type": "image/tiff; application=geotiff"} for k, v in hrefs.items()}}
    coll = rasterduck.build_collection(stac=[item])
    assert not coll.errors(), coll.errors()
    return coll.to_parquet(root / "two.parquet")


def test_attach_with_bands_keeps_only_their_metadata(site: Site) -> None:
    parquet = _two_dtype_record(site.root, site.server)
    con = rasterduck.connect()
    rasterduck.attach(con, "every", parquet)
    rasterduck.attach(con, "a_only", parquet, bands=["a"])
    cols = [d[0] for d in con.execute("SELECT * FROM a_only").description]
    assert "a_metadata" in cols and "f_metadata" not in cols and "assets" in cols and "id" in cols
    aoi = shapely.box(500_000 + 35, 5_000_000 - 1_000, 500_000 + 900, 5_000_000 - 95)
    g = to_4326(aoi, "EPSG:32633")
    q = "SELECT load_bands(r, '{}', ['a']) FROM {} r"
    [(px_full,)] = con.execute(q.format(g.wkt, "every")).fetchall()
    [(px_a,)] = con.execute(q.format(g.wkt, "a_only")).fetchall()
    assert px_a == px_full
    assert_result_matches(px_a, rasterio_pixels(site.root / "two_a.tif", g), "uint16")
    # a band the view left out is named in the error
    with pytest.raises(duckdb.Error, match="'f'"):
        con.execute(q.format(g.wkt, "a_only").replace("['a']", "['f']")).fetchall()
    # only the kept bands join the pixel-type rule: uint16 alone stays USMALLINT, with float32 it is FLOAT
    solo = rasterduck.connect()
    rasterduck.attach(solo, "a_only", parquet, bands=["a"])
    assert '"data" USMALLINT[][]' in solo.execute(f"SELECT typeof(load_bands(r, '{g.wkt}', ['a'])) FROM a_only r").fetchall()[0][0]
    assert '"data" FLOAT[][]' in con.execute(f"SELECT typeof(load_bands(r, '{g.wkt}', ['a'])) FROM a_only r").fetchall()[0][0]
    # a Collection object is narrowed the same way; unknown bands and a bare string are refused at attach
    rasterduck.attach(solo, "obj", rasterduck.open_collection(parquet), bands=["f"])
    assert "a_metadata" not in [d[0] for d in solo.execute("SELECT * FROM obj").description]
    with pytest.raises(rasterduck.errors.CollectionError, match=r"band 'zz'.*\['a', 'f'\]"):
        rasterduck.attach(solo, "bad", parquet, bands=["zz"])
    with pytest.raises(TypeError, match="list of band codes"):
        rasterduck.attach(solo, "bad", parquet, bands="a")
    with pytest.raises(ValueError, match="at least one band"):
        rasterduck.attach(solo, "bad", parquet, bands=[])


def test_rasteret_folder_attached_with_bands_reads_like_rasterio(tmp_path: Path) -> None:
    """rasteret 0.4.1's Hive-partitioned collection attached as a folder, with only its RGB bands: the view
    keeps the partition columns, resolves the relative hrefs, and the pixel type is the RGB's uint8 (all
    bands attached, its uint16, int16 and float32 bands promote it to FLOAT)."""
    from ._paths import testdata_dir

    folder = tmp_path / "rasteret"
    shutil.copytree(testdata_dir() / "collections" / "rasteret-0.4.1-corpus", folder)
    (folder / "geotiff").symlink_to(testdata_dir() / "geotiff")  # its hrefs are relative: geotiff/...
    roots = [folder, testdata_dir() / "geotiff"]
    con = rasterduck.connect()
    rasterduck.attach(con, "every", folder, allow_local=roots)
    rasterduck.attach(con, "rgb", folder, allow_local=roots, bands=["red", "green", "blue"])
    cols = [d[0] for d in con.execute("SELECT * FROM rgb").description]
    assert {"red_metadata", "green_metadata", "blue_metadata", "year", "month"} <= set(cols)
    assert "b1_metadata" not in cols
    path = testdata_dir() / "geotiff" / "rasterio" / "rgb_lzw.tif"
    g = aois_for(path)[0]
    q = "SELECT load_bands(r, '{}', ['red', 'green', 'blue']) FROM {} r WHERE r.id = 'rgb-lzw'"
    expected = rasterio_pixels(path, g, [1, 2, 3])
    assert expected is not None and expected["valid"].any()
    [(px,)] = con.execute(q.format(g.wkt, "rgb")).fetchall()
    assert_result_matches(px, expected, "uint8")
    [(t,)] = con.execute(f"SELECT typeof(load_bands(r, '{g.wkt}', ['red'])) FROM rgb r LIMIT 1").fetchall()
    assert '"data" FLOAT[][]' in t  # the connection also attached every band (uint16, int16, float32, uint8)
    solo = rasterduck.connect()
    rasterduck.attach(solo, "rgb", folder, allow_local=roots, bands=["red", "green", "blue"])
    [(px2,)] = solo.execute(q.format(g.wkt, "rgb")).fetchall()
    assert '"data" UTINYINT[][]' in solo.execute(f"SELECT typeof(load_bands(r, '{g.wkt}', ['red'])) FROM rgb r "
                                                  "LIMIT 1").fetchall()[0][0]
    assert_result_matches(px2, expected, "uint8")


def test_register_is_idempotent_and_found_from_cursors(site: Site) -> None:
    con = rasterduck.connect()
    cur = con.cursor()
    assert rasterduck.duck.state_of(cur) is rasterduck.duck.state_of(con)
    assert rasterduck.register(cur) is rasterduck.register(con)
    rasterduck.attach(cur, "coll", site.colls["i8"].parquet)  # attach through a cursor retypes load_bands
    [(t,)] = con.execute(f"SELECT typeof(load_bands(r, '{site.colls['i8'].aois[0].wkt}', ['b1'])) FROM coll r").fetchall()
    assert '"data" TINYINT[][]' in t


def test_database_files_read_only_and_reopened(tmp_path: Path) -> None:
    db = tmp_path / "x.duckdb"
    rasterduck.connect(db).close()  # macros are stored in the file (they use only built-in functions)
    plain = duckdb.connect(str(db))
    assert plain.execute("SELECT valid_count({'valid': [true, false, true]})").fetchall() == [(2,)]
    plain.close()
    fresh = tmp_path / "fresh.duckdb"
    duckdb.connect(str(fresh)).close()
    ro = rasterduck.connect(fresh, read_only=True)  # cannot store macros: they are created TEMP
    assert ro.execute("SELECT masked_max({'bands': ['a'], 'data': [[4, 9, 7]], 'valid': [true, false, true]}, 'a')"
                      ).fetchall() == [(7,)]


def test_sql_files_ship_in_the_package() -> None:
    names = [n for n, _ in rasterduck.duck.sql_files()]
    assert names and all(n.endswith(".sql") for n in names)
    repo_sql = Path(__file__).resolve().parents[1] / "sql"
    assert sorted(p.name for p in repo_sql.glob("*.sql")) == sorted(names)


def test_query_process_imports_neither_pandas_nor_numpy_ma(site: Site) -> None:
    """A first query pays for every module it imports: pandas (pa.array / pq.read_table, ~0.25 s) and
    numpy.ma (np.unique's first call, 10-20 ms) must stay out of a fresh process's SQL join and API read.
    DuckDB 1.x itself imports pyarrow.dataset (and with it pandas) for any Arrow UDF: a control process
    running a no-op Arrow UDF says what DuckDB brings, and our process may import nothing beyond it."""
    import subprocess
    import sys

    from ._paths import REPO_ROOT

    def heavy_modules(code: str) -> str:
        code += "print(sorted(m for m in ('pandas', 'numpy.ma') if m in sys.modules))\n"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                              env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    control = heavy_modules(
        "import sys, duckdb\n"
        "con = duckdb.connect()\n"
        "con.create_function('f', lambda x: x, None, 'INTEGER', type='arrow')\n"
        "con.sql('SELECT f(i::INTEGER) FROM range(3) t(i)').fetchall()\n")
    c = site.colls["u16"]
    ours = heavy_modules(
        "import sys, shapely, rasterduck\n"
        "con = rasterduck.connect()\n"
        f"rasterduck.attach(con, 'coll', {str(c.parquet)!r})\n"
        f"rows = con.sql({join_sql('coll', c.aois)!r}).fetchall()\n"
        "assert len(rows) >= 3, len(rows)\n"
        f"res = rasterduck.open_collection({str(c.parquet)!r}).read("
        f"[shapely.from_wkt(w) for w in {[g.wkt for g in c.aois]!r}], ['b1'])\n")
    assert ours == control
    if duckdb.__version__.startswith("2."):
        assert ours == "[]"  # DuckDB 2 imports neither


# ---- load_bands_raw ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["u16", "i8", "f32", "rgb"])
def test_load_bands_raw_equals_rasterio_and_load_bands(site: Site, key: str) -> None:
    c = site.colls[key]
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", c.parquet)
    bands = "['red', 'green', 'blue']" if key == "rgb" else "['b1']"
    q = join_sql("coll", c.aois, bands, fn="load_bands_raw")
    [(typ,)] = con.execute(f"SELECT DISTINCT typeof(px) FROM ({q})").fetchall()
    assert typ.replace('"', "") == dtypes.raw_result_type()
    lists = {a: px for a, _r, px in con.execute(join_sql("coll", c.aois, bands)).fetchall()}
    rows = con.execute(q).fetchall()
    table = to_arrow_table(con.sql(q))
    assert table.schema.field("px").type.field("data").type == pa.list_(pa.binary())
    arrow_cells = dict(zip(table["aoi_id"].to_pylist(), table["px"], strict=True))
    hits = 0
    for aoi_id, _rid, px in rows:
        expected = rasterio_pixels(c.path, c.aois[aoi_id])
        if expected is None:
            assert px is None and lists[aoi_id] is None
            continue
        hits += 1
        assert px["dtype"] == c.dtype and px["bands"] == lists[aoi_id]["bands"]
        h, w = px["height"], px["width"]
        assert [len(b) for b in px["data"]] == [h * w * np.dtype(c.dtype).itemsize] * len(px["bands"])
        assert len(px["valid"]) == h * w and set(px["valid"]) <= {0, 1}
        for k in ("height", "width", "transform", "crs", "nodata"):
            assert px[k] == lists[aoi_id][k]
        # one band: rasterio's mask; several: the same valid list as load_bands (GDAL's dataset mask, checked
        # in test_read_corpus), which rasterio.mask's per-band masks do not give
        want_valid = expected["valid"] if key != "rgb" else np.asarray(lists[aoi_id]["valid"], bool).reshape(h, w)
        for cell in (px, arrow_cells[aoi_id]):
            data, valid = rasterduck.to_numpy(cell, masked=False)
            assert data.dtype == np.dtype(c.dtype)
            np.testing.assert_array_equal(data, expected["data"])
            np.testing.assert_array_equal(valid, want_valid)
        masked = rasterduck.to_numpy(px)
        np.testing.assert_array_equal(masked.mask, np.broadcast_to(~want_valid, masked.shape))
    assert hits >= 1


def test_load_bands_raw_keeps_each_rows_dtype_and_safe_mode(site: Site) -> None:
    con = rasterduck.connect()
    rasterduck.attach(con, "u16", site.colls["u16"].parquet)
    rasterduck.attach(con, "i8", site.colls["i8"].parquet)
    rasterduck.attach(con, "f32", site.colls["f32"].parquet)
    aois = {k: site.colls[k].aois[0] for k in ("u16", "i8", "f32")}
    q = " UNION ALL ".join(f"SELECT '{k}' AS k, load_bands_raw(r, '{g.wkt}', ['b1']) AS px FROM {k} r"
                           for k, g in aois.items())
    got = dict(con.execute(q).fetchall())
    for k, px in got.items():
        c = site.colls[k]
        assert px["dtype"] == c.dtype  # no promotion: uint16, int8 and float32 rows in one result
        data, valid = rasterduck.to_numpy(px, masked=False)
        expected = rasterio_pixels(c.path, aois[k])
        np.testing.assert_array_equal(data, expected["data"])
        np.testing.assert_array_equal(valid, expected["valid"])
    g = aois["u16"]
    [(px,)] = con.execute(f"SELECT load_bands_raw_safe(r, '{g.wkt}', ['b1', 'nir']) FROM u16 r").fetchall()
    assert px["data"] is None and px["valid"] is None and "band 'nir' not found" in px["error"]
    with pytest.raises(duckdb.Error, match="band 'nir' not found"):
        con.execute(f"SELECT load_bands_raw(r, '{g.wkt}', ['nir']) FROM u16 r").fetchall()
    far = site.colls["u16"].aois[-1]
    assert con.execute(f"SELECT load_bands_raw(r, '{far.wkt}', ['b1']), "
                       f"load_bands_raw_safe(r, '{far.wkt}', ['b1']) FROM u16 r").fetchall() == [(None, None)]
