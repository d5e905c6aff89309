"""Collections: the rasteret schema contract, field by field, and round trips through Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

import rasterduck
from rasterduck.core.metadata import RASTERET_FIELDS
from rasterduck.errors import CollectionError

from ._paths import testdata_dir as shared_testdata

RASTERET = shared_testdata() / "collections" / "rasteret-0.4.1-corpus"
RASTERET_FILE = next(RASTERET.rglob("*.parquet"))


def rasteret_schema() -> pa.Schema:
    return pq.read_schema(RASTERET_FILE)


def test_rasteret_collection_opens() -> None:
    c = rasterduck.open_collection(RASTERET)
    assert len(c) == 7
    assert set(c.bands) == {"b1", "red", "green", "blue"}
    ids = [a.id for a in c.iterate_rasters()]
    assert sorted(ids) == sorted(["cog-u16", "cog-i16", "web-u16-pred2", "rgb-lzw", "f2r23-lzw", "shade", "inverted-lat"])
    acc = next(a for a in c.iterate_rasters() if a.id == "rgb-lzw")
    meta, url, idx = acc.try_get_band_cog_metadata("green")
    assert meta is not None and url == "geotiff/rasterio/rgb_lzw.tif" and idx == 1
    assert meta.dtype == "uint8" and meta.crs == "EPSG:32618"
    assert acc.try_get_band_cog_metadata("b1") == (None, None, None)
    # the year/month Hive keys come back as integers
    assert pa.types.is_integer(c.to_arrow().schema.field("year").type)


@pytest.fixture(scope="module")
def built(http_server) -> rasterduck.Collection:
    urls = [http_server.url("geotiff/" + p) for p in ("rio-tiler/cog.tif", "rasterio/rgb_lzw.tif", "rio-tiler/inverted_lat.tif")]
    return rasterduck.build_collection(urls, ids=["cog", "rgb", "inv"], datetimes=["2024-03-01T10:00:00Z"] * 3)


def test_our_schema_carries_the_contract_field_by_field(built: rasterduck.Collection, tmp_path: Path) -> None:
    path = built.to_parquet(tmp_path / "c.parquet")
    ours = pq.read_schema(path)
    theirs = rasteret_schema()
    for name in ("id", "datetime", "geometry", "proj:epsg", "crs", "bbox"):
        assert ours.field(name).type == theirs.field(name).type, name
    assert ours.field("year").type == ours.field("month").type == pa.int32()  # rasteret: Hive keys
    # assets: struct of {href string, band_index int32}
    for i in range(ours.field("assets").type.num_fields):
        assert ours.field("assets").type.field(i).type == theirs.field("assets").type.field(0).type
    # every {band}_metadata struct starts with rasteret's 17 fields, same names, order and types
    for name in ours.names:
        if name.endswith("_metadata"):
            t = ours.field(name).type
            ref = theirs.field("b1_metadata").type
            assert [t.field(i).name for i in range(17)] == [ref.field(i).name for i in range(17)]
            for i in range(17):
                assert t.field(i).type == ref.field(i).type == RASTERET_FIELDS[i].type, t.field(i).name
    meta = {k.decode(): v.decode() for k, v in ours.metadata.items()}
    for key in ("name", "data_source", "description", "created", "date_range", "rasteret_collection_version"):
        assert key in meta
    geo = json.loads(meta["geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    field_meta = ours.field("geometry").metadata
    assert field_meta[b"ARROW:extension:name"] == b"geoarrow.wkb"


def test_built_records(built: rasterduck.Collection, http_server) -> None:
    t = built.to_arrow()
    rows = {r["id"]: r for r in t.to_pylist()}
    assert set(built.bands) == {"b1", "b2", "b3"}
    assert rows["cog"]["proj:epsg"] == 32621 and rows["cog"]["crs"] == "EPSG:32621"
    assert rows["rgb"]["assets"]["b3"] == {"href": http_server.url("geotiff/rasterio/rgb_lzw.tif"), "band_index": 2}
    assert rows["cog"]["assets"]["b2"] is None and rows["cog"]["b2_metadata"] is None
    m = rows["cog"]["b1_metadata"]
    assert (m["image_width"], m["image_height"], m["tile_width"], m["dtype"]) == (2658, 2667, 256, "uint16")
    assert len(m["tile_offsets"]) == 11 * 11 and len(m["overviews"]) == 4
    # footprint: CRS84 polygon whose bbox is the bbox column
    g = shapely.from_wkb(rows["cog"]["geometry"])
    b = rows["cog"]["bbox"]
    assert g.bounds == pytest.approx((b["xmin"], b["ymin"], b["xmax"], b["ymax"]))
    assert -62 < b["xmin"] < b["xmax"] < -52 and 72 < b["ymin"] < b["ymax"] < 75
    assert str(rows["cog"]["datetime"]) == "2024-03-01 10:00:00"


def test_parquet_round_trip_and_row_groups(built: rasterduck.Collection, tmp_path: Path) -> None:
    path = built.to_parquet(tmp_path / "c.parquet", row_group_size=1)
    assert pq.ParquetFile(path).num_row_groups == 3
    again = rasterduck.open_collection(path)
    assert again.to_arrow().select(["id", "b1_metadata"]).equals(built.to_arrow().select(["id", "b1_metadata"]))
    for a, b in zip(again.iterate_rasters(), built.iterate_rasters(), strict=True):
        ma, _, _ = a.try_get_band_cog_metadata("b1")
        mb, _, _ = b.try_get_band_cog_metadata("b1")
        assert ma is not None and mb is not None
        assert (ma.tile_offsets == mb.tile_offsets).all() and ma.transform == mb.transform


def test_broken_collections_fail_clearly(tmp_path: Path) -> None:
    t = pa.table({"id": ["a"], "geometry": [b""]})
    with pytest.raises(CollectionError, match="missing required column"):
        rasterduck.Collection(t)
    t = pq.read_table(RASTERET_FILE).drop_columns(["assets"])
    with pytest.raises(CollectionError, match="assets"):
        rasterduck.Collection(t)
    bad = pq.read_table(RASTERET_FILE)
    bad = bad.set_column(bad.schema.get_field_index("b1_metadata"), "b1_metadata", pa.array(["x"] * bad.num_rows))
    with pytest.raises(CollectionError, match="b1_metadata"):
        rasterduck.Collection(bad)
    with pytest.raises(FileNotFoundError):
        rasterduck.open_collection(tmp_path / "nope.parquet")


def _with_bboxes(coll: rasterduck.Collection, boxes: list[tuple[float, float, float, float] | None]
                 ) -> rasterduck.Collection:
    """`coll`'s first record repeated once per box, each with that bbox (None: no bbox) and its own id."""
    first = coll.to_arrow().slice(0, 1)
    table = pa.concat_tables([first] * len(boxes))
    bbox_type = table.schema.field("bbox").type
    bbox = pa.array([None if b is None else dict(zip(("xmin", "ymin", "xmax", "ymax"), b, strict=True))
                     for b in boxes], bbox_type)
    table = table.set_column(table.schema.get_field_index("bbox"), "bbox", bbox)
    table = table.set_column(table.schema.get_field_index("id"), "id", pa.array([f"r{i}" for i in range(len(boxes))]))
    return rasterduck.Collection(table, name="boxes")


def test_overlapping_records_equal_a_brute_force_bbox_test(built: rasterduck.Collection) -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    lo = rng.uniform(-50, 50, (300, 2))
    boxes: list[tuple[float, float, float, float] | None] = [
        (float(x), float(y), float(x + w), float(y + h)) for (x, y), (w, h) in zip(lo, rng.uniform(0, 5, (300, 2)),
                                                                                  strict=True)]
    boxes[5] = None  # a record without a bbox never matches a located AOI
    boxes[6] = (1.0, 1.0, 1.0, 1.0)  # a degenerate box
    coll = _with_bboxes(built, boxes)
    aois = [(0.0, 0.0, 1.0, 1.0), (10.0, 10.0, 10.0, 10.0), (-49.0, 20.0, -30.0, 22.0), (200.0, 0.0, 201.0, 1.0)]
    for query in ([a] for a in aois):
        want = [i for i, b in enumerate(boxes)
                if b is not None and b[2] >= query[0][0] and b[0] <= query[0][2] and b[3] >= query[0][1]
                and b[1] <= query[0][3]]
        assert coll.overlapping(query).tolist() == want
    assert 6 in coll.overlapping([(0.0, 0.0, 1.0, 1.0)]).tolist()  # touching edges count
    assert coll.overlapping([None]).tolist() == [i for i, b in enumerate(boxes) if b is not None]
    assert coll.overlapping([]).tolist() == []
    assert [a.id for a in coll.rasters_at([7, 2])] == ["r2", "r7"]
    many = list(range(299, 19, -1))  # 280 rows
    assert [a.id for a in coll.rasters_at(many)] == [f"r{i}" for i in sorted(many)]  # > 256 rows: by batches
    assert coll.record_ids()[:3] == ["r0", "r1", "r2"] and coll.record_crs()[0] == next(coll.iterate_rasters()).info.crs


def test_read_converts_only_records_near_the_aois(built: rasterduck.Collection, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    """A read of one field from a large collection converts only the records whose bbox meets it."""
    from rasterduck.core.accessor import RasterInfo

    real = next(built.iterate_rasters())
    assert real.info.bbox is not None
    far = [(real.info.bbox[0] + 20 + i % 100, real.info.bbox[1], real.info.bbox[2] + 20 + i % 100, real.info.bbox[3])
           for i in range(5000)]
    coll = _with_bboxes(built, [*far[:2500], real.info.bbox, *far[2500:]])
    converted: list[str] = []
    original = RasterInfo.from_row.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(RasterInfo, "from_row", classmethod(lambda cls, row: converted.append(row["id"])
                                                           or original(cls, row)))
    g = shapely.box(*real.info.bbox).centroid.buffer(0.001)
    results = coll.read([g], ["b1"])
    assert [r.record_id for r in results] == ["r2500"] and converted == ["r2500"]
