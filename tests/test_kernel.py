"""The engine-neutral Arrow kernel (core/kernel.py) on its own: no DuckDB, no Spark.

Oracle: rasterio (`rasterio.mask.mask(crop=True)`, `sample`) on the files behind the rasteret 0.4.1
collection of the shared corpus, served over the local HTTP range server. For several bands, a pixel is
valid when any band is (rasterio's dataset mask, the read path's documented rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import shapely
from shapely.geometry.base import BaseGeometry

import rasterduck
from rasterduck.core import kernel as K
from rasterduck.errors import BandNotFoundError, RasterduckError

from ._paths import testdata_dir as shared_testdata
from .httpserver import RangeServer
from .test_duck_helpers import aois_for, assert_result_matches, from_4326
from .test_duck_helpers import rasterio_pixels as _rasterio_pixels

RASTERET = shared_testdata() / "collections" / "rasteret-0.4.1-corpus"
FILES = {"cog-u16": "rio-tiler/cog.tif", "cog-i16": "rio-tiler/cog_int16.tif", "web-u16-pred2": "rio-tiler/web.tif",
         "rgb-lzw": "rasterio/rgb_lzw.tif", "f2r23-lzw": "gdal/f2r23.tif", "shade": "rasterio/shade.tif",
         "inverted-lat": "rio-tiler/inverted_lat.tif"}


def rasterio_pixels(path: Path, geom4326: BaseGeometry) -> dict | None:
    """rasterio's crop for an AOI, valid where any band is valid inside the AOI."""
    import rasterio
    import rasterio.mask

    out = _rasterio_pixels(path, geom4326)
    if out is not None:
        with rasterio.open(path) as src:
            g = shapely.geometry.mapping(from_4326(geom4326, str(src.crs)))
            masked, _ = rasterio.mask.mask(src, [g], crop=True, filled=False)
        out["valid"] = ~np.ma.getmaskarray(masked).all(axis=0)
    return out


def _path(rid: str) -> Path:
    return shared_testdata() / "geotiff" / FILES[rid]


def _bands(rid: str) -> list[str]:
    return ["red", "green", "blue"] if rid == "rgb-lzw" else ["b1"]


@pytest.fixture(scope="module")
def records(http_server: RangeServer) -> dict[str, pa.StructArray]:
    """Each record of the corpus collection (hrefs on the test server) as a one-row StructArray."""
    c = rasterduck.open_collection(RASTERET).rewrite_hrefs({"geotiff/": http_server.url("geotiff/")})
    table = c.to_arrow()
    rows = table.combine_chunks().to_struct_array().combine_chunks()
    ids = table["id"].to_pylist()
    return {rid: rows.slice(i, 1) for i, rid in enumerate(ids)}


def _pairs(records: dict[str, pa.StructArray], rids: list[str]
           ) -> tuple[pa.StructArray, list[BaseGeometry], list[str], pa.Array]:
    """Every AOI of `aois_for` against its record: (records, AOIs, record ids, per-row band lists)."""
    recs, geoms, ids, bands = [], [], [], []
    for rid in rids:
        for g in aois_for(_path(rid)):
            recs.append(records[rid])
            geoms.append(g)
            ids.append(rid)
            bands.append(_bands(rid))
    return pa.concat_arrays(recs), geoms, ids, pa.array(bands, pa.list_(pa.string()))


def _wkb(geoms: list[BaseGeometry]) -> pa.Array:
    return pa.array([g.wkb for g in geoms], pa.binary())


def _as_dicts(col: pa.Array) -> list[dict | None]:
    return col.to_pylist()


def test_load_bands_arrow_equals_rasterio_for_every_record(records: dict[str, pa.StructArray]) -> None:
    rids = list(FILES)
    recs, geoms, ids, bands = _pairs(records, rids)
    dtypes = K.band_dtypes(pa.Table.from_struct_array(recs))
    assert dtypes == {"uint16", "int16", "uint8", "float32"}
    target = K.promote(dtypes)
    assert target == "float32"  # holds uint16, int16 and uint8 exactly
    out = K.load_bands_arrow(recs, _wkb(geoms), bands, pixel_type=target)
    assert out.type.field("data").type == pa.list_(pa.list_(pa.float32()))
    hits = 0
    for row, g, rid in zip(_as_dicts(out), geoms, ids, strict=True):
        expected = rasterio_pixels(_path(rid), g)
        assert_result_matches(row, expected, row["dtype"] if row else "float32")
        if expected is not None:
            hits += 1
            assert row is not None and row["bands"] == _bands(rid)
            np.testing.assert_array_equal(np.array(row["data"]).reshape(expected["data"].shape), expected["data"])
    assert hits >= 2 * len(rids)


def test_aoi_forms_give_the_same_column(records: dict[str, pa.StructArray]) -> None:
    rids = ["cog-u16", "rgb-lzw", "shade"]
    recs, geoms, ids, bands = _pairs(records, rids)
    base = K.load_bands_arrow(recs, _wkb(geoms), bands, pixel_type="float64")
    assert base.null_count < len(base)
    wkt = K.load_bands_arrow(recs, pa.array([g.wkt for g in geoms]), bands, pixel_type="float64")
    srid = pa.StructArray.from_arrays([pa.array([4326] * len(geoms), pa.int32()), _wkb(geoms)], names=["srid", "wkb"])
    as_struct = K.load_bands_arrow(recs, srid, bands, pixel_type="float64")
    # AOIs moved into each raster's CRS beforehand, with the CRS per row (text) or as an SRID
    crs = [str(records[r].field("crs")[0]) if records[r].field("proj:epsg")[0].as_py() is None
           else f"EPSG:{records[r].field('proj:epsg')[0].as_py()}" for r in ids]
    moved = [from_4326(g, c) for g, c in zip(geoms, crs, strict=True)]
    native = K.load_bands_arrow(recs, _wkb(moved), bands, geometry_crs=pa.array(crs), pixel_type="float64")
    epsg = pa.array([int(c.split(":")[1]) for c in crs], pa.int32())
    native_srid = K.load_bands_arrow(recs, pa.StructArray.from_arrays([epsg, _wkb(moved)], names=["srid", "wkb"]),
                                     bands, pixel_type="float64")
    for other in (wkt, as_struct):
        assert other.equals(base)
    assert native.equals(native_srid)
    for row, g, rid in zip(_as_dicts(native), geoms, ids, strict=True):
        assert_result_matches(row, rasterio_pixels(_path(rid), g), row["dtype"] if row else "float64")


def test_constant_band_list_and_crs(records: dict[str, pa.StructArray]) -> None:
    recs, geoms, _ids, _bands_arr = _pairs(records, ["cog-u16", "cog-i16"])
    a = K.load_bands_arrow(recs, _wkb(geoms), ["b1"], geometry_crs="EPSG:4326", pixel_type="int32")
    b = K.load_bands_arrow(recs, _wkb(geoms), "b1", geometry_crs=4326, pixel_type="int32")
    assert a.equals(b)
    assert a.type.field("data").type == pa.list_(pa.list_(pa.int32()))


def test_on_error_null_reports_per_row(records: dict[str, pa.StructArray]) -> None:
    rec = records["cog-u16"]
    g = aois_for(_path("cog-u16"))[0]
    recs = pa.concat_arrays([rec, rec, rec, rec])
    geoms = pa.array([g.wkb, g.wkb, b"\x01\x03garbage", None], pa.binary())
    bands = pa.array([["b1"], ["nope"], ["b1"], ["b1"]], pa.list_(pa.string()))
    out = K.load_bands_arrow(recs, geoms, bands, on_error="null", pixel_type="uint16")
    rows = _as_dicts(out)
    assert rows[0] is not None and rows[0]["error"] is None
    assert_result_matches({k: v for k, v in rows[0].items() if k != "error"}, rasterio_pixels(_path("cog-u16"), g),
                          "uint16")
    assert rows[1] is not None and rows[1]["data"] is None and "BandNotFoundError" in rows[1]["error"]
    assert "cog-u16" in rows[1]["error"] and "'nope'" in rows[1]["error"]
    assert rows[2] is not None and rows[2]["data"] is None and "GeometryError" in rows[2]["error"]
    assert rows[3] is None  # a NULL AOI is a NULL result, not an error
    with pytest.raises(BandNotFoundError, match="nope"):
        K.load_bands_arrow(recs, geoms, bands, on_error="raise", pixel_type="uint16")
    with pytest.raises(ValueError, match="on_error"):
        K.load_bands_arrow(recs, geoms, bands, on_error="skip", pixel_type="uint16")  # type: ignore[arg-type]


def test_pixel_type_must_hold_the_band(records: dict[str, pa.StructArray]) -> None:
    rec = records["cog-u16"]
    g = aois_for(_path("cog-u16"))[0]
    with pytest.raises(RasterduckError, match="uint16 does not fit"):
        K.load_bands_arrow(rec, _wkb([g]), ["b1"], pixel_type="int16")
    out = K.load_bands_arrow(rec, _wkb([g]), ["b1"], pixel_type="int16", on_error="null")
    assert "does not fit" in out.field("error")[0].as_py()
    assert K.promote(["uint16", "int8"]) == "int32" and K.promote([]) == "float64"
    assert K.pixel_dtype("float16") == "float32" and K.pixel_dtype("bool") == "uint8"


def test_zonal_stats_arrow_equals_numpy_on_rasterio(records: dict[str, pa.StructArray]) -> None:
    recs, geoms, ids, _bands_arr = _pairs(records, ["cog-u16", "f2r23-lzw", "shade"])
    out = K.zonal_stats_arrow(recs, _wkb(geoms), "b1")
    assert out.type == K.ZONAL_STRUCT
    for row, g, rid in zip(_as_dicts(out), geoms, ids, strict=True):
        expected = rasterio_pixels(_path(rid), g)
        if expected is None:
            assert row is None
            continue
        import rasterio
        import rasterio.features

        with rasterio.open(_path(rid)) as src:
            shape = expected["data"].shape[1:]
            inside = ~rasterio.features.geometry_mask([shapely.geometry.mapping(from_4326(g, str(src.crs)))], shape,
                                                      expected["transform"])
        vals = expected["data"][0][expected["valid"]].astype(np.float64)
        assert row is not None
        assert row["count"] == int(inside.sum())
        assert row["valid_count"] == vals.size
        if vals.size:
            assert row["min"] == vals.min() and row["max"] == vals.max()
            assert row["mean"] == pytest.approx(vals.mean()) and row["std"] == pytest.approx(vals.std())


def test_pixel_values_arrow_equals_rasterio_sample(records: dict[str, pa.StructArray]) -> None:
    import rasterio

    rid = "rgb-lzw"
    path = _path(rid)
    with rasterio.open(path) as src:
        b = src.bounds
        pts = [shapely.Point(b.left + fx * (b.right - b.left), b.bottom + fy * (b.top - b.bottom))
               for fx, fy in ((0.1, 0.2), (0.5, 0.5), (0.93, 0.71))]
        expected = [list(v) for v in src.sample([(p.x, p.y) for p in pts])]
        crs = str(src.crs)
    recs = pa.concat_arrays([records[rid]] * (len(pts) + 1))
    far = shapely.Point(0.0, 0.0)
    geoms = _wkb([*pts, far])
    out = K.pixel_values_arrow(recs, geoms, ["red", "green", "blue"], geometry_crs=crs)
    got = out.to_pylist()
    assert got[:-1] == [[float(v) for v in e] for e in expected]
    assert got[-1] is None
    with pytest.raises(RasterduckError, match="expected a POINT"):
        K.pixel_values_arrow(records[rid], _wkb([shapely.box(0, 0, 1, 1)]), ["red"])


def test_intersects_arrow_matches_footprints(records: dict[str, pa.StructArray]) -> None:
    recs, geoms, ids, _bands_arr = _pairs(records, ["cog-u16", "web-u16-pred2"])
    out = K.intersects_arrow(recs, _wkb(geoms)).to_pylist()
    for hit, g, rid in zip(out, geoms, ids, strict=True):
        assert hit == (rasterio_pixels(_path(rid), g) is not None)
    nulls = K.intersects_arrow(pa.concat_arrays([recs.slice(0, 1)] * 2), pa.array([geoms[0].wkb, None], pa.binary()))
    assert nulls.to_pylist() == [True, None]


def test_one_call_fetches_a_shared_tile_once(server: RangeServer) -> None:
    c = rasterduck.open_collection(RASTERET).rewrite_hrefs({"geotiff/": server.url("geotiff/")})
    table = c.to_arrow()
    rows = table.combine_chunks().to_struct_array().combine_chunks()
    rec = rows.slice(table["id"].to_pylist().index("cog-u16"), 1)
    g = aois_for(_path("cog-u16"))[0]
    kernel = K.Kernel()  # fresh caches: both runs start cold
    server.reset_counters()
    one = K.load_bands_arrow(rec, _wkb([g]), ["b1"], pixel_type="uint16", context=kernel)
    single = server.requests
    server.reset_counters()
    many = K.load_bands_arrow(pa.concat_arrays([rec] * 25), _wkb([g] * 25), ["b1"], pixel_type="uint16",
                              context=kernel)
    assert single >= 1 and server.requests == single
    assert all(many.slice(i, 1).equals(one) for i in range(25))


def test_process_kernel_is_shared_per_settings() -> None:
    a = K.process_kernel()
    assert K.process_kernel() is a
    b = K.process_kernel(allow_local=True)
    assert b is not a and K.process_kernel(allow_local=True) is b
    assert K.process_kernel(max_concurrent=4) is not a
    from rasterduck.io.loop import get_default_backend

    assert a.backend is get_default_backend()  # one HTTP session per process for the default settings


def test_raw_array_bytes_nulls_and_errors() -> None:
    from rasterduck.core.read import ReadResult

    big = np.arange(6, dtype=">u2").reshape(1, 2, 3)  # a big-endian array: the BLOB is little-endian anyway
    f32 = np.array([[[1.5, -2.0]], [[3.25, 0.0]]], dtype=np.float32)
    rows: list[K.Row] = [
        ReadResult("a", ["b1"], big, np.array([[True, False, True], [True, True, False]]), (1, 0, 0, 0, -1, 0),
                   "EPSG:32632", 0, "uint16"),
        None,
        RasterduckError("boom", record_id="c"),
        ReadResult("d", ["x", "y"], f32, np.array([[True, False]]), (2, 0, 5, 0, -2, 7), None, 0.0, "float32"),
    ]
    with pytest.raises(RasterduckError, match="boom"):
        K.load_bands_raw_array(rows, safe=False)
    out = K.load_bands_raw_array(rows, safe=True).to_pylist()
    assert out[0]["data"] == [np.arange(6, dtype="<u2").tobytes()] and out[0]["valid"] == bytes([1, 0, 1, 1, 1, 0])
    assert (out[0]["height"], out[0]["width"], out[0]["dtype"], out[0]["crs"]) == (2, 3, "uint16", "EPSG:32632")
    assert out[1] is None
    assert out[2]["data"] is None and out[2]["valid"] is None and "boom" in out[2]["error"]
    assert out[3]["data"] == [f32[0].astype("<f4").tobytes(), f32[1].astype("<f4").tobytes()]
    assert out[3]["bands"] == ["x", "y"] and out[3]["transform"] == [2, 0, 5, 0, -2, 7] and out[3]["crs"] is None
    lists = K.load_bands_array(rows[:2] + rows[3:], np.dtype(np.float32), safe=False).to_pylist()
    for raw, lst in zip([out[0], out[1], out[3]], lists, strict=True):
        if lst is None:
            assert raw is None
            continue
        assert {k: raw[k] for k in ("bands", "height", "width", "transform", "crs", "dtype", "nodata")} == \
            {k: lst[k] for k in ("bands", "height", "width", "transform", "crs", "dtype", "nodata")}
        assert [bool(v) for v in raw["valid"]] == lst["valid"]


def test_joined_is_a_view_only_for_back_to_back_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 20000  # parts of 20-40 KB: over the size where a view beats a copy
    slab = np.arange(3 * n, dtype=np.uint16)
    parts = [slab[0:n], slab[n:n + 1], slab[n + 1:2 * n + 1]]
    out = K.joined(parts, np.dtype(np.uint16))
    assert np.shares_memory(out, slab) and np.array_equal(out, np.arange(2 * n + 1))
    gap = K.joined([slab[0:n], slab[n + 5:2 * n]], np.dtype(np.uint16))  # a failed row's place left empty
    assert not np.shares_memory(gap, slab) and np.array_equal(gap, np.r_[0:n, n + 5:2 * n])
    swapped = K.joined([slab[n:2 * n], slab[0:n]], np.dtype(np.uint16))
    assert not np.shares_memory(swapped, slab) and np.array_equal(swapped, np.r_[n:2 * n, 0:n])
    wider = K.joined(parts, np.dtype(np.int32))  # another pixel type: copied with a safe cast
    assert wider.dtype == np.int32 and np.array_equal(wider, np.arange(2 * n + 1))
    as_bytes = K.joined([p.view(np.uint8) for p in parts], np.dtype(np.uint8))
    assert np.shares_memory(as_bytes, slab) and as_bytes.tobytes() == slab[:2 * n + 1].tobytes()
    other = np.arange(3, dtype=np.uint16)
    assert K.joined([slab[0:2], other], np.dtype(np.uint16)).tolist() == [0, 1, 0, 1, 2]
    assert K.joined([], np.dtype(np.float32)).dtype == np.float32
    with pytest.raises(TypeError):
        K.joined([np.arange(3, dtype=np.int16)], np.dtype(np.uint16))  # never an unsafe cast
    small = [slab[0:6], slab[6:7], slab[7:15]]  # small parts: a copy costs less than checking them
    assert not np.shares_memory(K.joined(small, np.dtype(np.uint16)), slab)
    monkeypatch.setattr(K, "_VIEW_MIN_BYTES", 0)
    assert np.shares_memory(K.joined(small, np.dtype(np.uint16)), slab)


def test_packed_reads_equal_unpacked_and_share_buffers(records: dict[str, pa.StructArray],
                                                       http_server: RangeServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A packed read gives the same results, each dtype's pixels back to back in row order, and a row
    that fails mid-read (a missing file) leaves a gap that the join copies around."""
    monkeypatch.setattr(K, "_VIEW_MIN_BYTES", 0)  # these windows are small: join them as views all the same
    broken = rasterduck.open_collection(RASTERET).rewrite_hrefs({"geotiff/": http_server.url("missing/")})
    table = broken.to_arrow()
    gone = table.combine_chunks().to_struct_array().combine_chunks().slice(table["id"].to_pylist().index("cog-u16"), 1)
    recs, geoms, _ids, bands = _pairs(records, ["cog-u16", "rgb-lzw", "cog-i16", "web-u16-pred2"])
    g = aois_for(_path("cog-u16"))[0]
    cut = 5
    recs = pa.concat_arrays([recs.slice(0, cut), gone, recs.slice(cut)])
    geoms = [*geoms[:cut], g, *geoms[cut:]]
    band_lists = [*bands.to_pylist()[:cut], ["b1"], *bands.to_pylist()[cut:]]
    kernel = K.Kernel()
    chunk = K.ChunkRecords(recs, kernel.cache)
    crs = ["EPSG:4326"] * len(geoms)
    plain = K.read_pairs(kernel, chunk, geoms, band_lists, crs)
    packed = K.read_pairs(kernel, chunk, geoms, band_lists, crs, packed=True)
    assert isinstance(packed[cut], RasterduckError) and isinstance(plain[cut], RasterduckError)
    ok = [i for i, r in enumerate(packed) if isinstance(r, K.ReadResult)]
    assert len(ok) >= 8
    for i in ok:
        a, b = plain[i], packed[i]
        assert isinstance(a, K.ReadResult) and isinstance(b, K.ReadResult)
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.valid, b.valid)
        assert (a.bands, a.transform, a.crs, a.dtype, a.nodata) == (b.bands, b.transform, b.crs, b.dtype, b.nodata)
    results = {i: r for i, r in enumerate(packed) if isinstance(r, K.ReadResult)}
    plain_results = {i: r for i, r in enumerate(plain) if isinstance(r, K.ReadResult)}
    u16 = {i: r for i, r in results.items() if r.dtype == "uint16"}
    bases = {id(r.data.base) for r in u16.values() if r.data.base is not None}
    assert len(bases) == 1 and all(r.data.base is not None for r in u16.values())  # one buffer per dtype
    assert all(r.data.base is None for r in plain_results.values())
    before = [r.data.reshape(-1) for i, r in u16.items() if i < cut]
    assert len(before) >= 2 and np.shares_memory(K.joined(before, np.dtype(np.uint16)), before[0])
    after = [r.data.reshape(-1) for i, r in u16.items()]  # across the failed row's gap: a copy
    assert not np.shares_memory(K.joined(after, np.dtype(np.uint16)), after[0])
    whole = K.joined([r.valid.reshape(-1) for r in results.values()], np.dtype(bool))
    np.testing.assert_array_equal(whole, np.concatenate([r.valid.reshape(-1) for r in plain_results.values()]))
    for safe in (True, False):
        if safe:
            assert K.load_bands_raw_array(packed, safe=True).equals(K.load_bands_raw_array(plain, safe=True))
            assert K.load_bands_array(packed, np.dtype(np.float64), safe=True).equals(
                K.load_bands_array(plain, np.dtype(np.float64), safe=True))
        else:
            with pytest.raises(RasterduckError, match="cog-u16"):
                K.load_bands_array(packed, np.dtype(np.float64), safe=False)


def test_band_sources_of_a_chunk_match_row_by_row_parsing(records: dict[str, pa.StructArray]) -> None:
    """The chunk's band metadata is converted in runs of rows: each row's sources equal parsing its own
    record, rows of one record share one list, and a broken or missing band fails only its rows, named."""
    row = records["cog-u16"].to_pylist()[0]
    row["id"] = "broken"
    row["b1_metadata"]["transform"] = None
    broken = pa.array([row], records["cog-u16"].type)
    order = ["cog-u16", "cog-u16", "web-u16-pred2", "broken", "web-u16-pred2", "cog-i16", "shade", "cog-u16"]
    recs = pa.concat_arrays([broken if rid == "broken" else records[rid] for rid in order])
    codes = [["b1"]] * len(order)
    codes[6] = ["b1", "nope"]
    chunk = K.ChunkRecords(recs, K.MetadataCache())
    got = chunk.sources_many(list(range(len(order))), codes)
    for i, rid in enumerate(order):
        if i in (3, 6):
            continue
        one = K.ChunkRecords(records[rid], K.MetadataCache()).source(0, "b1")
        srcs = got[i]
        assert isinstance(srcs, list) and len(srcs) == 1
        assert (srcs[0].url, srcs[0].band, srcs[0].band_index) == (one.url, one.band, one.band_index)
        m, ref = srcs[0].meta, one.meta
        assert (m.dtype, m.transform, m.image_width, m.tile_width, m.nodata, m.crs) == \
            (ref.dtype, ref.transform, ref.image_width, ref.tile_width, ref.nodata, ref.crs)
        np.testing.assert_array_equal(m.tile_offsets, ref.tile_offsets)
        np.testing.assert_array_equal(m.tile_byte_counts, ref.tile_byte_counts)
    assert got[0] is got[1] is got[7] and got[2] is got[4]
    bad = got[3]
    assert isinstance(bad, RasterduckError) and bad.record_id == "broken" and bad.band == "b1"
    assert bad.url == row["assets"]["b1"]["href"]
    missing = got[6]
    assert isinstance(missing, BandNotFoundError) and missing.record_id == "shade" and "'nope'" in str(missing)
    # one list object per row (not shared, as band_lists shares them): the same sources, row by row
    fresh = K.ChunkRecords(recs, K.MetadataCache()).sources_many(list(range(len(order))), [list(c) for c in codes])
    for a, b in zip(got, fresh, strict=True):
        if isinstance(a, list):
            assert isinstance(b, list) and [(s.url, s.band) for s in a] == [(s.url, s.band) for s in b]
        else:
            assert type(a) is type(b) and str(a) == str(b)


def test_band_lists_share_one_list_per_band_set() -> None:
    lists = K.band_lists(pa.array([["a", "b"], None, ["a", "b"], ["c"], ["a", "b"]], pa.list_(pa.string())))
    assert lists == [["a", "b"], None, ["a", "b"], ["c"], ["a", "b"]]
    assert lists[0] is lists[2] is lists[4] and lists[3] is not lists[0]
    text = K.band_lists(pa.array(["x", None, "x", "y"]))
    assert text == [["x"], None, ["x"], ["y"]] and text[0] is text[2]
    const = K.band_lists(["a", "b"], 3)
    assert const == [["a", "b"]] * 3 and const[0] is const[2]
    assert K.band_lists("a", 2) == [["a"], ["a"]]
