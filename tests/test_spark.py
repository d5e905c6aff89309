"""The Spark surface in local mode (local[2]): the README join in Spark SQL, the typed results, and the
mapInArrow bulk job -- pixels equal to DuckDB's `load_bands` on the same pairs and to rasterio's.

One SparkSession for the module (starting one costs ~10 s); the collections are served by a real local
HTTP range server, as in the DuckDB tests.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shapely.geometry.base import BaseGeometry

import rasterduck

from .httpserver import RangeServer
from .test_duck_helpers import (
    aois_for,
    assert_result_matches,
    corpus_path,
    from_4326,
    write_int8_tif,
)
from .test_kernel import rasterio_pixels  # rasterio's crop; valid where any band is (the dataset mask)

pyspark = pytest.importorskip("pyspark", reason="the Spark surface needs pyspark (pip install rasterduck[spark])")

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import types as T  # noqa: E402

import rasterduck.spark  # noqa: E402


@dataclass
class Site:
    server: RangeServer
    root: Path
    mixed: Path  # collection: a uint16 and an int8 record, band b1
    rgb: Path  # collection: one uint8 record, bands red/green/blue
    files: dict[str, Path]  # record id -> GeoTIFF on disk (oracle input)
    aois: list[BaseGeometry]


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # workers run this interpreter (rasterduck importable)
    session = (SparkSession.builder.master("local[2]").appName("rasterduck-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))  # not the cwd
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "5")  # several kernel calls per query
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("spark_site")
    u16 = root / "cog.tif"
    shutil.copyfile(corpus_path("rio-tiler/cog.tif"), u16)
    i8 = write_int8_tif(root / "int8.tif")
    rgb = root / "rgb_lzw.tif"
    shutil.copyfile(corpus_path("rasterio/rgb_lzw.tif"), rgb)
    with RangeServer(root) as srv:
        mixed = rasterduck.build_collection([srv.url(u16.name), srv.url(i8.name)])
        rgbc = rasterduck.build_collection([srv.url(rgb.name)], bands=["red", "green", "blue"])
        assert not mixed.errors() and not rgbc.errors()
        ids = mixed.to_arrow()["id"].to_pylist() + rgbc.to_arrow()["id"].to_pylist()
        files = dict(zip(ids, (u16, i8, rgb), strict=True))
        yield Site(srv, root, mixed.to_parquet(root / "mixed.parquet"), rgbc.to_parquet(root / "rgb.parquet"), files,
                   aois_for(u16) + aois_for(i8) + aois_for(rgb)[:3])


@pytest.fixture(scope="module")
def views(spark: SparkSession, site: Site) -> Site:
    """Register the functions (pixel type from the mixed collection) and the collection / aoi views."""
    reg = rasterduck.spark.register(spark, collection=site.mixed)
    assert reg.pixel_dtype == "int32" and reg.pixel_type == T.IntegerType()  # uint16 with int8
    spark.read.parquet(str(site.mixed)).createOrReplaceTempView("collection")
    spark.read.parquet(str(site.rgb)).createOrReplaceTempView("rgb")
    rows = [(i, g.wkb, g.wkt) for i, g in enumerate(site.aois)]
    spark.createDataFrame(rows, "id INT, geom BINARY, wkt STRING").createOrReplaceTempView("aoi")
    return site


# Spark allows no `r.*` in a join condition: raster_intersects takes the footprint column there
README_JOIN = ("SELECT aoi.id AS aoi_id, r.id AS rid, {fn}(struct(r.*), {geom}, array({bands})) AS px "
               "FROM {coll} r JOIN aoi ON raster_intersects(r.geometry, aoi.geom)")


def _spark_rows(spark: SparkSession, sql: str) -> dict[tuple[int, str], Any]:
    table = spark.sql(sql).toArrow()
    return {(a, r): px for a, r, px in zip(table["aoi_id"].to_pylist(), table["rid"].to_pylist(),
                                           table["px"].to_pylist(), strict=True)}


def _duck_rows(site: Site, coll: Path, fn: str, bands: str) -> dict[tuple[int, str], Any]:
    con = rasterduck.connect()
    rasterduck.attach(con, "collection", coll)
    values = ", ".join(f"({i}, '{g.wkt}')" for i, g in enumerate(site.aois))
    q = (f"SELECT aoi.id, r.id, {fn}(r, aoi.geom, [{bands}]) FROM collection r "
         f"JOIN (VALUES {values}) aoi(id, geom) ON raster_intersects(r, aoi.geom)")
    return {(a, r): px for a, r, px in con.execute(q).fetchall()}


def _native(rid: str) -> str:
    return "uint16" if rid.startswith("cog") else "int8"


def test_readme_join_in_spark_sql_equals_duckdb_and_rasterio(spark: SparkSession, views: Site) -> None:
    sql = README_JOIN.format(fn="load_bands", geom="aoi.geom", bands="'b1'", coll="collection")
    px_type = spark.sql(sql).schema["px"].dataType
    assert px_type == rasterduck.spark.load_bands_type("int32")
    assert px_type["data"].dataType == T.ArrayType(T.ArrayType(T.IntegerType()))
    got = _spark_rows(spark, sql)
    want = _duck_rows(views, views.mixed, "load_bands", "'b1'")
    assert set(got) == set(want) and len(got) >= 6
    hits = 0
    for (aoi, rid), px in got.items():
        assert px == want[(aoi, rid)]  # DuckDB also returns INTEGER (int32) pixels for uint16 + int8
        expected = rasterio_pixels(views.files[rid], views.aois[aoi])
        assert_result_matches(px, expected, _native(rid))
        hits += expected is not None
    assert hits >= 6


def test_unsigned_pixels_and_typed_variants(spark: SparkSession, views: Site) -> None:
    sql = README_JOIN.format(fn="load_bands_u8", geom="aoi.geom", bands="'red', 'green', 'blue'", coll="rgb")
    assert spark.sql(sql).schema["px"].dataType["data"].dataType == T.ArrayType(T.ArrayType(T.ShortType()))
    got = _spark_rows(spark, sql)
    assert len(got) == 3
    for (aoi, rid), px in got.items():
        assert_result_matches(px, rasterio_pixels(views.files[rid], views.aois[aoi]), "uint8")
    assert max(max(max(b) for b in px["data"]) for px in got.values() if px) > 127  # uint8 above int8's range


def test_zonal_stats_and_pixel_values_equal_duckdb(spark: SparkSession, views: Site) -> None:
    got = _spark_rows(spark, README_JOIN.format(fn="zonal_stats", geom="aoi.geom", bands="'b1'", coll="collection"))
    want = _duck_rows(views, views.mixed, "zonal_stats", "'b1'")
    assert got == want and any(v and v["valid_count"] for v in got.values())
    points = ("SELECT aoi.id AS aoi_id, r.id AS rid, pixel_values(struct(r.*), ST_AsBinary(ST_Centroid("
              "ST_GeomFromWKB(aoi.geom))), array('b1')) AS px FROM collection r JOIN aoi "
              "ON raster_intersects(r.geometry, aoi.geom)")
    try:
        got_pts = _spark_rows(spark, points)
    except Exception as exc:  # no ST_Centroid in this Spark: compute the centroids on the driver
        assert "ST_Centroid" in str(exc) or "UNRESOLVED_ROUTINE" in str(exc)
        cent = [(i, g.centroid.wkb) for i, g in enumerate(views.aois)]
        spark.createDataFrame(cent, "id INT, pt BINARY").createOrReplaceTempView("pts")
        got_pts = _spark_rows(spark, "SELECT aoi.id AS aoi_id, r.id AS rid, pixel_values(struct(r.*), pts.pt, "
                                     "array('b1')) AS px FROM collection r JOIN aoi ON raster_intersects("
                                     "r.geometry, aoi.geom) JOIN pts ON pts.id = aoi.id")
    con = rasterduck.connect()
    rasterduck.attach(con, "collection", views.mixed)
    for (aoi, rid), vals in got_pts.items():
        c = views.aois[aoi].centroid
        [(duck,)] = con.execute(f"SELECT pixel_values(r, '{c.wkt}', ['b1']) FROM collection r WHERE r.id = ?",
                                [rid]).fetchall()
        assert vals == duck


def test_aoi_forms_errors_and_safe_variant(spark: SparkSession, views: Site) -> None:
    base = _spark_rows(spark, README_JOIN.format(fn="load_bands", geom="aoi.geom", bands="'b1'", coll="collection"))
    wkt = _spark_rows(spark, README_JOIN.format(fn="load_bands", geom="aoi.wkt", bands="'b1'", coll="collection"))
    geometry = _spark_rows(spark, README_JOIN.format(fn="load_bands", geom="ST_SetSRID(ST_GeomFromWKB(aoi.geom), 4326)",
                                                     bands="'b1'", coll="collection"))
    assert wkt == base and geometry == base
    # an AOI already in the raster's CRS, with the trailing geom_crs argument
    rid, path = next((r, p) for r, p in views.files.items() if r.startswith("cog"))
    import rasterio

    with rasterio.open(path) as src:
        crs = str(src.crs)
    moved = [(i, from_4326(g, crs).wkb) for i, g in enumerate(views.aois)]
    spark.createDataFrame(moved, "id INT, geom BINARY").createOrReplaceTempView("aoi_utm")
    utm = _spark_rows(spark, f"SELECT a.id AS aoi_id, r.id AS rid, load_bands(struct(r.*), a.geom, array('b1'), "
                             f"'{crs}') AS px FROM collection r JOIN aoi_utm a ON r.id = '{rid}'")
    assert {k: v for k, v in utm.items() if v is not None} == {k: v for k, v in base.items() if k[1] == rid and v}
    safe = _spark_rows(spark, README_JOIN.format(fn="load_bands_safe", geom="aoi.geom", bands="'b1', 'nope'",
                                                 coll="collection"))
    assert safe and all(px["data"] is None and "BandNotFoundError" in px["error"] and "'nope'" in px["error"]
                        for px in safe.values() if px is not None)
    with pytest.raises(Exception, match="BandNotFoundError"):
        spark.sql(README_JOIN.format(fn="load_bands", geom="aoi.geom", bands="'nope'", coll="collection")).collect()


def _read_job(path: Path) -> dict[tuple[int, str], Any]:
    table = pq.read_table(path)
    return {(a, r): px for a, r, px in zip(table["aoi_id"].to_pylist(), table["record_id"].to_pylist(),
                                           table["result"].to_pylist(), strict=True)}


def test_maparrow_job_writes_parquet_equal_to_duckdb(spark: SparkSession, views: Site, tmp_path: Path) -> None:
    pairs = spark.sql("SELECT aoi.id AS aoi_id, struct(r.*) AS record, aoi.geom FROM collection r JOIN aoi "
                      "ON raster_intersects(r.geometry, aoi.geom)")
    summary = rasterduck.spark.load_bands_job(pairs, ["b1"], str(tmp_path / "out"), partitions=2, rows_per_call=3)
    got = _read_job(tmp_path / "out")
    want = _duck_rows(views, views.mixed, "load_bands", "'b1'")
    assert set(got) == set(want)
    for key, px in got.items():
        assert px is None or px.pop("error") is None
        assert px == want[key]
    assert summary.pairs == len(got) and summary.errors == 0
    assert summary.results == sum(1 for v in got.values() if v is not None)
    schema = pq.read_table(tmp_path / "out").schema
    assert schema.field("result").type.field("data").type == pa.list_(pa.list_(pa.int32()))
    # a GEOMETRY column (Spark's own here; Sedona's works the same way): ST_AsBinary and its SRID
    geo = pairs.selectExpr("aoi_id", "record", "ST_SetSRID(ST_GeomFromWKB(geom), 4326) AS geom")
    rasterduck.spark.load_bands_job(geo, ["b1"], str(tmp_path / "geo"), dtype="int32", on_error="raise")
    assert _read_job(tmp_path / "geo") == want


def test_job_fetches_tiles_shared_by_a_scenes_aois_once(spark: SparkSession, views: Site, tmp_path: Path) -> None:
    rid = next(r for r in views.files if r.startswith("cog"))
    g = views.aois[0]
    coll = spark.read.parquet(str(views.mixed)).where(f"id = '{rid}'")

    def run(copies: int, name: str) -> tuple[int, dict[tuple[int, str], Any]]:
        aois = spark.createDataFrame([(i, g.wkb) for i in range(copies)], "aoi_id INT, geom BINARY")
        pairs = coll.selectExpr("struct(*) AS record").crossJoin(aois)
        views.server.wait_idle()
        views.server.reset_counters()
        rasterduck.spark.load_bands_job(pairs, ["b1"], str(tmp_path / name), dtype="uint16", partitions=2)
        return views.server.requests, _read_job(tmp_path / name)

    one, single = run(1, "one")
    many, results = run(40, "many")
    assert one >= 1 and many == one  # 40 AOIs on the same tiles: fetched once, in one partition
    assert len(results) == 40 and all(px == single[(0, rid)] for px in results.values())
    expected = rasterio_pixels(views.files[rid], g)
    px = dict(single[(0, rid)])
    px.pop("error")
    assert_result_matches(px, expected, "uint16")
    assert np.asarray(px["data"]).size > 0


def test_type_mapping_is_what_the_kernel_builds() -> None:
    """Every pixel dtype: the kernel's column (carrier dtype) has exactly the Arrow type Spark expects, and
    uint64 values beyond int64 survive as decimal(20,0)."""
    from rasterduck.core.kernel import load_bands_array
    from rasterduck.core.read import ReadResult
    from rasterduck.spark.types import SPARK_PIXEL_TYPES, arrow_type, carrier_dtype, conform

    expected = {"uint8": T.ShortType(), "int8": T.ByteType(), "uint16": T.IntegerType(), "int16": T.ShortType(),
                "uint32": T.LongType(), "int32": T.IntegerType(), "uint64": T.DecimalType(20, 0),
                "int64": T.LongType(), "float32": T.FloatType(), "float64": T.DoubleType()}
    assert {k: v[0] for k, v in SPARK_PIXEL_TYPES.items()} == expected
    for dt in SPARK_PIXEL_TYPES:
        info = np.iinfo(dt) if np.dtype(dt).kind in "iu" else np.finfo(dt)
        data = np.array([[[info.min, info.max]]], dtype=dt)
        row = ReadResult("r", ["b1"], data, np.ones((1, 2), bool), (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), "EPSG:32633",
                         0, dt)
        built = load_bands_array([row, None], np.dtype(carrier_dtype(dt)), safe=False)
        want = arrow_type(rasterduck.spark.load_bands_type(dt))
        out = conform(built, rasterduck.spark.load_bands_type(dt))
        assert out.type.equals(want)
        assert built.type.equals(want) == (dt != "uint64")  # only uint64 needs a cast
        values = out.field("data")[0].as_py()[0]
        assert [int(v) if np.dtype(dt).kind in "iu" else v for v in values] == [info.min, info.max]
        assert not out[1].is_valid
