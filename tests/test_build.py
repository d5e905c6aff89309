"""Collection builders: hrefs, STAC items, records tables, the CLI; one bad asset never aborts."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import shapely.geometry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rasterduck
from rasterduck.build.api import BuildReport
from rasterduck.build.sources import specs_from_stac
from rasterduck.core.arrowbuild import array_of, infer_array
from rasterduck.core.metadata import METADATA_TYPE
from rasterduck.core.schema import BBOX_TYPE, ERRORS_TYPE
from rasterduck.errors import AccessDeniedError

from ._paths import REPO_ROOT, corpus_dir


def stac_item(server, item_id: str, assets: dict[str, str], epsg: int | None = None) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": "2023-06-01T10:20:30Z", "eo:cloud_cover": 12.5, **({"proj:epsg": epsg} if epsg else {})},
        "assets": {k: {"href": server.url("geotiff/" + v), "type": "image/tiff; application=geotiff"} for k, v in assets.items()}
        | {"thumbnail": {"href": server.url("thumb.png"), "type": "image/png"}},
        "collection": "test-collection",
    }


def test_build_from_hrefs_reports_failures_and_keeps_going(server) -> None:
    urls = [server.url("geotiff/rio-tiler/cog.tif"), server.url("geotiff/missing.tif"),
            server.url("geotiff/README.md"), server.url("geotiff/gdal/cint16.tif"),
            server.url("geotiff/rio-tiler/web.tif")]
    report = BuildReport()
    c = rasterduck.build_collection(urls, report=report)
    assert len(c) == 5 and report.records == 5 and report.files == 5
    errors = {e["href"].rsplit("/", 1)[-1]: e["message"] for e in c.errors()}
    assert set(errors) == {"missing.tif", "README.md", "cint16.tif"}
    assert "404" in errors["missing.tif"]
    assert "not a TIFF" in errors["README.md"]
    assert "SampleFormat" in errors["cint16.tif"]
    assert "missing.tif" in errors["missing.tif"] or "missing.tif" in str(c.errors())
    # every COG header cost one request; the failures no more than a few
    assert report.requests == server.requests
    assert server.per_path["/geotiff/rio-tiler/cog.tif"] == 1
    ok = [a.id for a in c.iterate_rasters() if a.try_get_band_cog_metadata("b1")[0] is not None]
    assert ok == ["cog", "web"]


def test_rotated_and_ungeoreferenced_files_build(server) -> None:
    c = rasterduck.build_collection([server.url("geotiff/rasterio/rotated.tif"), server.url("geotiff/pillow/hopper_lzma.tif")])
    assert c.errors() == []
    rows = {r["id"]: r for r in c.to_arrow().to_pylist()}
    # a rotated grid keeps its full affine (rasteret refuses 6-value rotated transforms clearly)
    assert rows["rotated"]["b1_metadata"]["transform"] == pytest.approx([17.320508075688775, 5.0, 100.0, 10.0, -8.660254037844387, 200.0])
    # no georeferencing: pixel space like GDAL (identity), no CRS, no footprint
    assert rows["hopper_lzma"]["b1_metadata"]["transform"] == [1.0, 0.0, 1.0, 0.0]
    assert rows["hopper_lzma"]["crs"] is None and rows["hopper_lzma"]["geometry"] is None


def test_build_from_stac_items(server, tmp_path: Path) -> None:
    items = {"type": "FeatureCollection", "features": [
        stac_item(server, "S2_A", {"red": "rio-tiler/cog.tif", "nir": "rio-tiler/cog_int16.tif"}, epsg=32621),
        stac_item(server, "S2_B", {"red": "rio-tiler/cog.tif"}),
    ]}
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items))
    c = rasterduck.build_collection(stac=path)
    rows = {r["id"]: r for r in c.to_arrow().to_pylist()}
    assert set(c.bands) == {"red", "nir"}  # the PNG thumbnail is not a band
    assert rows["S2_A"]["proj:epsg"] == 32621 and rows["S2_B"]["proj:epsg"] == 32621  # B from the header
    assert rows["S2_A"]["eo:cloud_cover"] == 12.5 and rows["S2_A"]["collection"] == "test-collection"
    assert rows["S2_B"]["nir_metadata"] is None
    assert str(rows["S2_A"]["datetime"]) == "2023-06-01 10:20:30"
    # band selection and renaming: code -> asset key
    c2 = rasterduck.build_collection(stac=items, bands={"B04": "red"})
    assert c2.bands == ["B04"]


def test_build_from_records_table(server, tmp_path: Path) -> None:
    table = pa.table({
        "id": [1, 2],
        "datetime": [2020, 2021],
        "scene_url": [server.url("geotiff/rasterio/rgb_lzw.tif"), server.url("geotiff/rasterio/rgb_deflate.tif")],
        "label": ["a", "b"],
    })
    pq.write_table(table, tmp_path / "records.parquet")
    c = rasterduck.build_collection(table=tmp_path / "records.parquet", href_column="scene_url",
                                    band_index_map={"red": 0, "green": 1, "blue": 2})
    rows = {r["id"]: r for r in c.to_arrow().to_pylist()}
    assert set(rows) == {"1", "2"} and rows["1"]["label"] == "a"
    assert str(rows["2"]["datetime"]) == "2021-01-01 00:00:00"
    # rgb_deflate is planar-separate striped: each band gets its own plane's strips
    g = rows["2"]["green_metadata"]
    r = rows["2"]["red_metadata"]
    assert g["planar_configuration"] == 2 and len(g["tile_offsets"]) == len(r["tile_offsets"])
    assert g["tile_offsets"][0] != r["tile_offsets"][0]
    # enriching an existing collection table: same assets, headers fetched again
    again = rasterduck.build_collection(table=c.to_arrow())
    assert again.to_arrow()["green_metadata"].to_pylist() == c.to_arrow()["green_metadata"].to_pylist()


def test_local_paths_need_permission(tmp_path: Path) -> None:
    src = corpus_dir() / "rio-tiler" / "cog.tif"
    c = rasterduck.build_collection([str(src)])  # a build from local paths allows their own folders
    assert c.errors() == []
    items = {"type": "Feature", "id": "x", "geometry": None, "properties": {"datetime": "2020-01-01T00:00:00Z"},
             "assets": {"b": {"href": str(src), "type": "image/tiff"}}}
    c = rasterduck.build_collection(stac=items)  # a STAC item naming a local file: denied by default
    assert "AccessDenied" in c.errors()[0]["message"]
    with pytest.raises(AccessDeniedError):
        from rasterduck.io.backend import DefaultBackend
        from rasterduck.io.loop import run_sync

        run_sync(DefaultBackend().read_ranges(str(src), [(0, 8)]))
    c = rasterduck.build_collection(stac=items, allow_local=[str(corpus_dir())])
    assert c.errors() == []


def test_cli_build(server, tmp_path: Path) -> None:
    out = tmp_path / "c.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "rasterduck.cli", "build", str(out), server.url("geotiff/rio-tiler/cog.tif"),
         server.url("geotiff/rasterio/rgb_lzw.tif"), server.url("geotiff/nothing.tif"), "--bands", "red,green,blue"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 records, 9 assets (3 files), 5 failures" in proc.stdout, proc.stdout
    assert "requests" in proc.stdout and " s" in proc.stdout
    assert "nothing.tif" in proc.stderr
    c = rasterduck.open_collection(out)
    assert c.bands == ["red", "green", "blue"]


def test_build_from_stac_url(make_server, tmp_path: Path) -> None:
    import shutil

    shutil.copy(corpus_dir() / "rio-tiler" / "cog.tif", tmp_path / "cog.tif")
    srv = make_server(root=tmp_path)
    item = {"type": "Feature", "id": "remote", "geometry": None, "properties": {"datetime": "2022-02-02T00:00:00Z"},
            "assets": {"B01": {"href": "cog.tif", "type": "image/tiff; application=geotiff"}}}
    (tmp_path / "item.json").write_text(json.dumps(item))
    c = rasterduck.build_collection(stac=srv.url("item.json"))
    assert c.errors() == []
    row = c.to_arrow().to_pylist()[0]
    assert row["assets"]["B01"]["href"] == srv.url("cog.tif")  # relative href resolved against the item URL
    assert row["B01_metadata"]["image_width"] == 2658


# ---- pandas-free assembly, geometry fast path, header concurrency (S4 build speed) ------------------

_LEAF_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64(), pa.float32(),
               pa.float64(), pa.bool_(), pa.string(), pa.binary(), pa.timestamp("us"), pa.null()]
_types = st.recursive(
    st.sampled_from(_LEAF_TYPES),
    lambda inner: st.one_of(
        inner.map(pa.list_),
        st.lists(inner, min_size=1, max_size=3).map(lambda ts: pa.struct([(f"f{i}", t) for i, t in enumerate(ts)]))),
    max_leaves=5)
# scalars of every kind, including the ones pa.array converts by its own rules (floats into int columns,
# bools, huge ints, numpy scalars, surrogates, tuples for structs)
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False), st.text(max_size=4),
    st.binary(max_size=4), st.just(1.0), st.just(2**53 + 1), st.just("\ud800"), st.just(np.int64(3)))


def _values_for(t: pa.DataType, depth: int = 0) -> st.SearchStrategy:
    """Mostly well-typed values of `t`, with nulls and an occasional stray scalar of another kind."""
    if pa.types.is_list(t):
        good: st.SearchStrategy = st.lists(_values_for(t.value_type, depth + 1), max_size=3)
        good = st.one_of(good, good.map(tuple))
    elif pa.types.is_struct(t):
        good = st.fixed_dictionaries({t.field(i).name: _values_for(t.field(i).type, depth + 1) for i in range(t.num_fields)},
                                     optional={"extra": st.integers()})
    elif pa.types.is_integer(t) or pa.types.is_timestamp(t):
        good = st.integers(-(2**63), 2**64 - 1)
    elif pa.types.is_floating(t):
        good = st.one_of(st.floats(), st.integers(-(2**60), 2**60))
    elif pa.types.is_boolean(t):
        good = st.booleans()
    elif pa.types.is_string(t):
        good = st.text(max_size=5)
    elif pa.types.is_binary(t):
        good = st.binary(max_size=5)
    else:
        good = st.none()
    return st.one_of(st.none(), good, good, good, _scalars)


def _same_as_pa_array(build: Any, oracle: Any) -> None:
    """`build()` gives what `oracle()` (pa.array) gives: an equal array of the same type, or the same error."""
    try:
        want = oracle()
    except Exception as exc:
        with pytest.raises(type(exc)):
            build()
        return
    got = build()
    got.validate(full=True)
    assert got.type == want.type and got.null_count == want.null_count
    # equals() says nan != nan; repr of the values tells nan == nan and -0.0 != 0.0
    assert got.equals(want) or repr(got.to_pylist()) == repr(want.to_pylist()), (got, want)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), t=_types)
def test_array_of_equals_pa_array(data: st.DataObject, t: pa.DataType) -> None:
    values = data.draw(st.lists(_values_for(t), max_size=6))
    _same_as_pa_array(lambda: array_of(values, t), lambda: pa.array(values, t))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_scalars, max_size=6))
def test_infer_array_equals_pa_array(values: list) -> None:
    _same_as_pa_array(lambda: infer_array(values), lambda: pa.array(values))


@pytest.mark.parametrize(("values", "t"), [
    ([127, -128, None], pa.int8()), ([128], pa.int8()), ([-129], pa.int8()), ([65535, 0], pa.uint16()), ([-1], pa.uint32()),
    ([2**64 - 1, None], pa.uint64()), ([2**64], pa.uint64()), ([2**63 - 1, -(2**63)], pa.int64()), ([2**63], pa.int64()),
    ([1.0, 2], pa.int32()), ([1.5], pa.int32()), ([True], pa.int64()), ([np.int64(3)], pa.int32()),
    ([1, 2.5, None], pa.float32()), ([3.4e39, -1e-50], pa.float32()), ([2**53, -(2**53)], pa.float64()),
    ([2**53 + 1], pa.float64()), ([2**24, -(2**24)], pa.float32()), ([2**24 + 1], pa.float32()), ([-(2**24) - 2], pa.float32()),
    ([True, False, None, True] * 3, pa.bool_()), ([1], pa.bool_()),
    (["é", None, ""], pa.string()), (["\ud800"], pa.string()), ([b"x", None], pa.string()), ([b"\x00", None], pa.binary()),
    (["y"], pa.binary()), ([0, None, 2**63 - 1], pa.timestamp("us")), ([dt.datetime(2020, 1, 2)], pa.timestamp("us")),
    ([[1, None], None, (2,), []], pa.list_(pa.int16())), ([[1], "ab"], pa.list_(pa.string())),
    ([{"a": None}, None, {}, {"a": "x", "b": 1}], pa.struct([("a", pa.string())])), ([("x",)], pa.struct([("a", pa.string())])),
    ([None, None], pa.null()), ([None, 1], pa.null()), ([[None], None], pa.list_(pa.null())),
])
def test_array_of_edge_values_equal_pa_array(values: list, t: pa.DataType) -> None:
    _same_as_pa_array(lambda: array_of(values, t), lambda: pa.array(values, t))


def test_array_of_on_the_build_schema() -> None:
    """The nested types the build writes, with nulls at every level, equal pa.array's arrays."""
    level = {"image_width": 3, "image_height": 2, "tile_width": 1, "tile_height": 1, "tile_offsets": [1, 2, 3],
             "tile_byte_counts": [4, 5, 6]}
    meta = {f.name: None for f in METADATA_TYPE}
    meta |= {"image_width": 10, "dtype": "uint16", "transform": [20.0, 0.5, -20.0, 1e300], "tile_offsets": [0, 2**40],
             "tile_byte_counts": [], "nodata": math.nan, "jpeg_tables": b"\xff\xd8", "overviews": [level, None],
             "mask": level}
    shuffled = dict(reversed(list(meta.items())))  # same keys, another order: the slow path
    rows = [meta, None, shuffled, {"image_width": 1}]
    got = array_of(rows, METADATA_TYPE)
    got.validate(full=True)
    assert repr(got.to_pylist()) == repr(pa.array(rows, METADATA_TYPE).to_pylist())  # repr: nan == nan
    errors = [[{"band": "b", "href": "h", "message": "m\u00e9"}], [], None, [None]]
    assert array_of(errors, ERRORS_TYPE).equals(pa.array(errors, ERRORS_TYPE))
    boxes = [None, {"xmin": 1.0, "ymin": 2.0, "xmax": 3.0, "ymax": 4.0}]
    assert array_of(boxes, BBOX_TYPE).equals(pa.array(boxes, BBOX_TYPE))


_POLYGONS = [
    {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], [[1, 1], [2, 1], [2, 2], [1, 1]]]},
    {"type": "Polygon", "coordinates": (((0.5, 0.5, 9.0), (1.5, 0.5, 9.0), (1.5, 1.5, 9.0), (0.5, 0.5, 9.0)),)},
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]},  # ring not closed
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]], [[0.1, 0.1, 1], [0.2, 0.1, 1], [0.2, 0.2, 1], [0.1, 0.1, 1]]]},
    {"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]]},
    {"type": "Point", "coordinates": [3, 4]},
]


@pytest.mark.parametrize("geometry", _POLYGONS)
def test_stac_footprints_as_shapely_shape_gives_them(geometry: dict) -> None:
    items = [{"id": "a", "geometry": geometry, "properties": {}, "assets": {}}, {"id": "b", "geometry": None, "assets": {}}]
    a, b = specs_from_stac(items)
    assert a.geometry == shapely.to_wkb(shapely.geometry.shape(geometry))
    assert b.geometry is None


def test_bad_stac_footprint_fails_as_shapely_does() -> None:
    bad = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}
    with pytest.raises(Exception) as want:
        shapely.geometry.shape(bad)
    with pytest.raises(type(want.value)):
        specs_from_stac([{"id": "a", "geometry": bad, "assets": {}}])


def test_built_table_is_what_collection_derives(server) -> None:
    """The bbox column the build lays out equals the one Collection derives from the footprints (in the
    same place), property columns keep pa.array's inferred types: the collection is the one it was."""
    items = [stac_item(server, "A", {"red": "rio-tiler/cog.tif"}, epsg=32621),
             stac_item(server, "B", {"red": "rasterio/rgb_lzw.tif"}), stac_item(server, "C", {"red": "missing.tif"})]
    items[0]["geometry"] = {"type": "Polygon", "coordinates": [[[-60, 1], [-59, 1], [-59, 2], [-60, 1]]]}
    items[1]["properties"] |= {"gsd": 10, "flag": True}
    items[0]["properties"] |= {"gsd": 20.5, "flag": None}
    raw = rasterduck.build_collection(stac=items).to_arrow()
    assert raw.column_names[-3:] == ["bbox", "year", "month"]
    derived = rasterduck.Collection(raw.drop_columns(["bbox", "year", "month"])).to_arrow()
    assert derived.column_names == raw.column_names
    assert derived.equals(raw)
    assert raw.schema.field("gsd").type == pa.float64() and raw.schema.field("flag").type == pa.bool_()
    assert raw["gsd"].to_pylist() == [20.5, 10.0, None]
    for wkb, box in zip(raw["geometry"].to_pylist(), raw["bbox"].to_pylist(), strict=True):
        if wkb is None:
            assert box is None
        else:
            assert tuple(box.values()) == shapely.from_wkb(wkb).bounds
    assert raw["bbox"].to_pylist()[0] == {"xmin": -60.0, "ymin": 1.0, "xmax": -59.0, "ymax": 2.0}
    assert raw["datetime"].to_pylist()[0] == dt.datetime(2023, 6, 1, 10, 20, 30)
    # a scalar STAC property named bbox: Collection replaces it in place with the covering struct
    items[1]["properties"]["bbox"] = "x"
    raw = rasterduck.build_collection(stac=items).to_arrow()
    at = raw.column_names.index("bbox")
    assert at < raw.column_names.index("build_errors") and raw.column_names[-2:] == ["year", "month"]
    as_text = raw.set_column(at, "bbox", pa.array([None, "x", None], pa.string())).drop_columns(["year", "month"])
    assert rasterduck.Collection(as_text).to_arrow().equals(raw)


def test_build_and_read_do_not_import_pandas(server, tmp_path: Path) -> None:
    """pa.array's first call imports pandas (~0.2 s, most of a small build), and so do `to_numpy` of an
    array with nulls and compute kernels given NumPy scalars: a build, its Parquet write, opening the
    collection and reading from it must not make any."""
    code = (
        "import sys, rasterduck\n"
        f"items = [{{'id': 'a', 'geometry': None, 'properties': {{'datetime': '2020-01-01T00:00:00Z', 'x': 1}},"
        f" 'assets': {{'b': {{'href': {server.url('geotiff/rio-tiler/cog.tif')!r}, 'type': 'image/tiff'}}}}}}]\n"
        f"c = rasterduck.build_collection(stac=items)\n"
        f"c.to_parquet({str(tmp_path / 'c.parquet')!r})\n"
        "assert c.errors() == [], c.errors()\n"
        "import shapely\n"
        f"o = rasterduck.open_collection({str(tmp_path / 'c.parquet')!r})\n"
        "g = shapely.box(*next(o.iterate_rasters()).info.bbox).centroid.buffer(0.01)\n"
        "assert len(o.read([g], ['b'])) == 1\n"
        "print('pandas' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_header_reads_in_flight_follow_max_concurrent(make_server) -> None:
    """Header reads are tiny: a build keeps up to `max_concurrent` (default 100) of them in flight, more
    than the 50 of pixel reads, and never more than asked."""
    from rasterduck.build.api import BUILD_CONCURRENCY

    srv = make_server(root=corpus_dir(), latency=0.3)
    urls = [srv.vurl(f"s{i}", "rio-tiler/cog.tif") for i in range(130)]
    c = rasterduck.build_collection(urls)
    assert c.errors() == [] and len(c) == 130
    assert BUILD_CONCURRENCY == 100
    assert 50 < srv.peak_in_flight <= BUILD_CONCURRENCY
    srv.reset_counters()
    c = rasterduck.build_collection([srv.vurl(f"t{i}", "rio-tiler/cog.tif") for i in range(40)], max_concurrent=7)
    assert c.errors() == [] and 1 <= srv.peak_in_flight <= 7
