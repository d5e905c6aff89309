"""`.pl()`: the README join fetched as a polars DataFrame, pixels compared with rasterio byte for byte.

The README's query runs on the sample collection shipped in examples/sample (uint16, two CRSs, four
fields, one missing both rasters); an int8 GeoTIFF with nodata and the float32 corpus file check that
`data` keeps the native type in polars too (Int8, Float32). The oracle is `rasterio.mask.mask(crop=True)`
through tests/test_duck_helpers.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import shapely

import rasterduck

from .test_duck_helpers import aois_for, corpus_path, rasterio_pixels, sql_aoi_values, write_int8_tif

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample"
SAMPLE_FILES = {"greenland-u16": SAMPLE / "data" / "cog.tif", "quebec-u16": SAMPLE / "data" / "web.tif"}
README_JOIN = ("SELECT aoi.field_id, r.id, load_bands(r, aoi.geom, ['b1']) AS px "
               "FROM sample r JOIN aoi ON raster_intersects(r, aoi.geom) ORDER BY aoi.field_id")
POLARS_TYPES = {"uint16": "UInt16", "int8": "Int8", "float32": "Float32"}


def _sample_connection() -> duckdb.DuckDBPyConnection:
    con = rasterduck.connect()
    rasterduck.attach(con, "sample", SAMPLE / "collection.parquet", allow_local=True)
    con.execute(f"CREATE TABLE aoi AS SELECT field_id, wkt::GEOMETRY AS geom "
                f"FROM read_csv('{SAMPLE / 'aois.csv'}')").fetchall()
    return con


def _native_pixels(frame: pl.DataFrame, i: int, h: int, w: int) -> np.ndarray:
    """Row i's `data` as a (bands, h, w) array straight from polars (no Python lists in between)."""
    cell = frame["px"].struct.field("data")[i]
    return np.stack([band.to_numpy() for band in cell]).reshape(-1, h, w)


def _assert_equals_rasterio(px: dict, native: np.ndarray, expected: dict, dtype: str) -> None:
    want = expected["data"]
    assert native.dtype == np.dtype(dtype) and want.dtype == np.dtype(dtype)
    assert native.shape == want.shape
    assert native.tobytes() == want.tobytes()  # byte for byte, nodata fill included
    arr = rasterduck.to_numpy(px)  # a polars cell is a dict: to_numpy takes it as is
    assert arr.dtype == np.dtype(dtype)
    assert np.ascontiguousarray(arr.data).tobytes() == want.tobytes()
    np.testing.assert_array_equal(~arr.mask[0], expected["valid"])
    np.testing.assert_allclose(px["transform"], expected["transform"], rtol=0, atol=1e-6)
    assert px["crs"] == expected["crs"]


def test_readme_join_through_pl_equals_rasterio() -> None:
    con = _sample_connection()
    df = con.sql(README_JOIN).pl()
    assert isinstance(df, pl.DataFrame)
    px_type = df.schema["px"]
    assert isinstance(px_type, pl.Struct)
    fields = {f.name: f.dtype for f in px_type.fields}
    assert fields["data"] == pl.List(pl.List(pl.UInt16))
    assert fields["valid"] == pl.List(pl.Boolean)
    assert df["px"].struct.field("data").dtype.inner == pl.List(pl.UInt16)
    wkts = dict(con.execute(f"SELECT field_id, wkt FROM read_csv('{SAMPLE / 'aois.csv'}')").fetchall())
    assert df["field_id"].to_list() == [1, 2, 3]  # field 4 misses both rasters: no row
    for i, row in enumerate(df.iter_rows(named=True)):
        expected = rasterio_pixels(SAMPLE_FILES[row["id"]], shapely.from_wkt(wkts[row["field_id"]]))
        assert expected is not None
        px = row["px"]
        assert px["dtype"] == "uint16" and px["bands"] == ["b1"]
        h, w = px["height"], px["width"]
        _assert_equals_rasterio(px, _native_pixels(df, i, h, w), expected, "uint16")
        assert px == df["px"][i]  # a Series element and a named row give the same cell
    lazy = con.sql(README_JOIN).pl(lazy=True)
    assert lazy.collect().equals(df)


@pytest.fixture(scope="module")
def typed_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("polars_typed")
    f32 = Path(shutil.copyfile(corpus_path("rio-tiler/inverted_lat.tif"), root / "inverted_lat.tif"))
    return {"int8": write_int8_tif(root / "int8.tif"), "float32": f32}


@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_pl_keeps_the_native_type(typed_files: dict[str, Path], dtype: str) -> None:
    path = typed_files[dtype]
    coll = rasterduck.build_collection([str(path)], allow_local=True)
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", coll, allow_local=True)  # allows the folder the tif is in
    aois = aois_for(path)
    q = (f"SELECT aoi.id AS aoi_id, load_bands(r, aoi.geom, ['b1']) AS px FROM coll r "
         f"JOIN {sql_aoi_values(aois)} ON raster_intersects(r, aoi.geom) ORDER BY aoi.id")
    df = con.sql(q).pl()
    pl_type = getattr(pl, POLARS_TYPES[dtype])
    assert df.schema["px"].to_schema()["data"] == pl.List(pl.List(pl_type))
    expected = {k: rasterio_pixels(path, g) for k, g in enumerate(aois)}
    hits = [k for k, e in expected.items() if e is not None]
    assert df["aoi_id"].to_list() == hits and len(hits) >= 3
    for i, row in enumerate(df.iter_rows(named=True)):
        px = row["px"]
        want = expected[row["aoi_id"]]
        assert want is not None
        _assert_equals_rasterio(px, _native_pixels(df, i, px["height"], px["width"]), want, dtype)
