"""Bad input through the Python API: it gives an empty result where that is the answer, else our own
clear error naming what is wrong (and the record, band and URL where there is one), never a crash.

AOIs: malformed WKB/WKT, empty, NULL, non-finite; unknown or no bands; AOIs in the wrong CRS or axis
order (swapped lat/lon is detected with the area of use of the raster's CRS); AOIs beside the raster
(no result, no error); huge AOIs (the pixel budget). Files: a corrupt compressed tile, a file cut
short after the collection was built. Collections: missing columns, wrong types. And a fuzz of the
whole read: tiles of nine codecs mutated on the served file, read over HTTP, must give our error or a
result of the right size (the decode-only and header-only fuzzers are test_decode.py and
test_header_fuzz.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rasterduck
from rasterduck.core.read import ReadResult
from rasterduck.errors import (
    BandNotFoundError,
    CollectionError,
    DecodeError,
    FetchError,
    GeometryError,
    PixelBudgetExceeded,
    RasterduckError,
)
from rasterduck.io import DefaultBackend, run_sync

from .httpserver import RangeServer
from .test_faults_helpers import (
    FAST,
    assert_matches_rasterio,
    build,
    from_4326,
    pixel_box,
    random_aois,
    rio_read,
    write_cog,
)

pytestmark = pytest.mark.timeout(120)
FILE = "cog.tif"


class Scene:
    """A served COG, two records over it, good AOIs, and a backend closed at the end of the module."""

    def __init__(self, folder: Path, server: RangeServer) -> None:
        self.folder = folder
        self.path = write_cog(folder / FILE)
        self.server = server
        self.urls = [server.vurl(f"s{i}", FILE) for i in range(2)]
        self.collection = build(self.urls, ["scene-0", "scene-1"])
        self.aois = random_aois(4, seed=3)
        self.backend = DefaultBackend(http=FAST)

    def accessor(self, record_id: str = "scene-0") -> Any:
        return next(a for a in self.collection.iterate_rasters() if a.id == record_id)

    def load(self, aois: Any, bands: list[str] | None = None, record_id: str = "scene-0", **kw: Any) -> Any:
        acc = self.accessor(record_id)
        return run_sync(acc.load_bands(aois, ["b1"] if bands is None else bands, output="results", backend=self.backend, **kw),
                        timeout=60)

    def read(self, aois: Any, bands: list[str] | None = None, **kw: Any) -> list[Any]:
        return self.collection.read(aois, ["b1"] if bands is None else bands, backend=self.backend, **kw)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("bad_input")
    with RangeServer(folder) as srv:
        s = Scene(folder, srv)
        yield s
        run_sync(s.backend.close())


@pytest.fixture
def srv(scene: Scene) -> Iterator[RangeServer]:
    scene.server.wait_idle()
    scene.server.reset()
    yield scene.server
    scene.server.reset()


# ------------------------------------------------------------------------------------------ AOIs
BAD_AOIS: list[tuple[str, Any, str]] = [
    ("truncated-wkb", bytes.fromhex("0103000000"), "malformed WKB"),
    ("garbage-bytes", b"\xde\xad\xbe\xef\x00\x01", "not WKB"),
    ("wkb-of-wrong-length", shapely.box(0, 0, 1, 1).wkb[:-3], "malformed WKB"),
    ("empty-polygon", shapely.Polygon(), "empty geometry"),
    ("empty-polygon-wkb", shapely.Polygon().wkb, "empty geometry"),
    ("null", None, "NULL"),
    ("broken-wkt", "POLYGON((0 0, 1 1", "malformed WKT"),
    ("nan-coordinates", shapely.Point(float("nan"), 52.0), "non-finite"),
    ("inverted-box", (14.0, 52.0, 13.0, 53.0), "is not (minx, miny, maxx, maxy)"),
    ("not-an-aoi", object(), "cannot read an AOI"),
]


@pytest.mark.parametrize("entry", ["load_bands", "collection"])
@pytest.mark.parametrize(("name", "aoi", "message"), BAD_AOIS, ids=[b[0] for b in BAD_AOIS])
def test_bad_aoi_is_a_geometry_error_before_any_request(scene: Scene, srv: RangeServer, entry: str, name: str,
                                                        aoi: Any, message: str) -> None:
    aois = [scene.aois[0], aoi]
    with pytest.raises(GeometryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        scene.load(aois) if entry == "load_bands" else scene.read(aois)
    assert srv.requests == 0


def test_null_in_a_geoarrow_array_is_named(scene: Scene) -> None:
    arr = pa.array([scene.aois[0].wkb, None], pa.binary())
    with pytest.raises(GeometryError, match="AOI 1 is NULL"):
        scene.read(arr)


def test_unknown_band_names_band_and_record(scene: Scene, srv: RangeServer) -> None:
    with pytest.raises(BandNotFoundError) as info:
        scene.load(scene.aois, ["b1", "nir"])
    assert (info.value.band, info.value.record_id) == ("nir", "scene-0")
    assert "band 'nir' not found" in str(info.value)
    with pytest.raises(BandNotFoundError, match="band 'nir' not found"):
        scene.read(scene.aois, ["nir"])
    assert srv.requests == 0


def test_no_bands_is_an_error(scene: Scene) -> None:
    with pytest.raises(RasterduckError, match="no bands requested"):
        scene.read(scene.aois, [])


def test_aoi_beside_the_raster_is_no_result_not_an_error(scene: Scene, srv: RangeServer) -> None:
    beside = pixel_box(600, 100, 10, 10)  # same UTM zone, east of the raster
    next_zone = shapely.box(20.0, 52.3, 20.01, 52.31)  # a join pairing it with this scene is normal
    assert scene.load([beside, next_zone]) == [None, None]
    assert scene.read([beside, next_zone]) == []
    assert srv.requests == 0
    # one across the edge is clipped to the raster, like rasterio
    edge = pixel_box(505.5, 30.2, 20, 9)
    [r] = scene.load([edge])
    assert r.width == 7  # 505.5 .. 512 -> columns 505..511
    assert_matches_rasterio([r], scene.path, [edge])


def test_swapped_lat_lon_is_reported(scene: Scene, srv: RangeServer) -> None:
    swapped = shapely.transform(scene.aois[0], lambda xy: xy[:, ::-1])
    with pytest.raises(GeometryError, match="latitude and longitude swapped") as info:
        scene.load([swapped])
    assert "outside the area of use of EPSG:32633" in str(info.value)
    assert info.value.record_id == "scene-0"
    with pytest.raises(GeometryError, match=r"AOI 0 overlaps no record: .*latitude and longitude swapped"):
        scene.read([swapped])
    assert srv.requests == 0


@pytest.mark.parametrize("entry", ["load_bands", "collection"])
def test_metres_passed_as_degrees_are_reported(scene: Scene, entry: str) -> None:
    metres = from_4326(scene.aois[0])  # UTM coordinates, but geometry_crs stays EPSG:4326
    with pytest.raises(GeometryError, match="are not latitudes in EPSG:4326"):
        scene.load([metres]) if entry == "load_bands" else scene.read([metres])
    # with the right geometry_crs the same AOI reads what the lon/lat AOI reads
    [a] = scene.load([metres], geometry_crs=32633)
    [b] = scene.load([scene.aois[0]])
    np.testing.assert_array_equal(a.data, b.data)


def test_unknown_aoi_crs_is_a_clear_error(scene: Scene) -> None:
    with pytest.raises(GeometryError, match="unknown CRS"):
        scene.load(scene.aois, geometry_crs="EPSG:999999")


def test_huge_aoi_hits_the_pixel_budget_before_any_request(scene: Scene, srv: RangeServer) -> None:
    whole = pixel_box(-10, -10, 600, 600)  # the whole 512 x 512 uint16 raster: 524 kB
    with pytest.raises(PixelBudgetExceeded, match=r"0\.5 MB of pixels, over the budget of 0\.1 MB"):
        scene.load([whole], pixel_budget=100_000)
    with pytest.raises(PixelBudgetExceeded):
        scene.read([whole, *scene.aois], pixel_budget=100_000)
    assert srv.requests == 0
    [r] = scene.load([whole], pixel_budget=600_000)
    assert r.data.shape == (1, 512, 512)
    assert_matches_rasterio([r], scene.path, [whole])


# ------------------------------------------------------------------------------------------ files
def _tile(path: Path, row: int, col: int) -> tuple[int, int]:
    """(offset, size) of a full-resolution tile, as GDAL reports it."""
    import rasterio

    with rasterio.open(path) as src:
        return (int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)),
                int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)))


@pytest.mark.parametrize("damage", ["garbage", "zeros", "cut-stream"])
def test_corrupt_tile_fails_like_gdal_naming_record_band_and_url(scene: Scene, srv: RangeServer,
                                                                  damage: str) -> None:
    """Where GDAL refuses the damaged tile, we raise DecodeError naming the pair; where GDAL reads it
    (a DEFLATE stream cut short still yields enough bytes), we read the very same pixels."""
    import rasterio

    data = bytearray(scene.path.read_bytes())
    off, size = _tile(scene.path, 0, 0)
    if damage == "garbage":
        data[off : off + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    elif damage == "zeros":
        data[off : off + size] = bytes(size)
    else:  # the stream stops after 40 % of its bytes (zeros follow)
        keep = int(size * 0.4)
        data[off + keep : off + size] = bytes(size - keep)
    damaged = scene.folder / "corrupt.tif"
    damaged.write_bytes(bytes(data))
    try:
        with rasterio.open(damaged) as src:
            try:
                gdal: np.ndarray | None = src.read(1, window=((0, 128), (0, 128)))
            except rasterio.errors.RasterioIOError:
                gdal = None
        url = srv.url("corrupt.tif")
        c = rasterduck.Collection(scene.collection.to_arrow()).rewrite_hrefs({scene.urls[0]: url})
        # rows 118..127 of tile (0, 0): the whole stream is decoded
        corner, inner = pixel_box(3, 118.5, 8, 9), pixel_box(300, 300, 8, 8)
        out = c.read([corner, inner], ["b1"], backend=scene.backend, raise_errors=False)
        got = {(r.record_id, r.geometry_index): r for r in out}  # errors carry both too
        first = got[("scene-0", 0)]
        if gdal is None:
            assert isinstance(first, DecodeError), first
            assert (first.record_id, first.band, first.url) == ("scene-0", "b1", url)
        else:
            assert isinstance(first, ReadResult), first
            ref = rio_read(damaged, corner)
            assert ref is not None
            np.testing.assert_array_equal(first.data, ref[0])
        # the other record (intact URL) and the intact tile of the damaged file still read
        assert all(isinstance(got[k], ReadResult) for k in [("scene-0", 1), ("scene-1", 0), ("scene-1", 1)])
        assert_matches_rasterio([got[("scene-0", 1)]], scene.path, [inner])
    finally:
        damaged.unlink()


def test_file_cut_short_after_the_build_fails_without_retries(scene: Scene, srv: RangeServer) -> None:
    cut = scene.folder / "cut.tif"
    cut.write_bytes(scene.path.read_bytes())
    try:
        c = build([srv.url("cut.tif")], ["cut-0"])
        cut.write_bytes(scene.path.read_bytes()[: int(scene.path.stat().st_size * 0.6)])
        backend = DefaultBackend(http=FAST)
        try:
            top, bottom = pixel_box(10, 10, 5, 5), pixel_box(500, 500, 5, 5)
            [r] = c.read([top], ["b1"], backend=backend)  # early tiles are still in the file
            assert_matches_rasterio([r], scene.path, [top])
            with pytest.raises(FetchError) as info:
                c.read([bottom], ["b1"], backend=backend)
            assert backend.stats.retries == 0
        finally:
            run_sync(backend.close())
        err = info.value
        assert err.status in (206, 416) and not err.transient
        assert (err.record_id, err.band, err.url) == ("cut-0", "b1", srv.url("cut.tif"))
        assert "416" in str(err) or "past the end of the file" in str(err)
    finally:
        cut.unlink()


# ------------------------------------------------------------------------------------------ collections
def test_collection_missing_columns(scene: Scene, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    t = scene.collection.to_arrow()
    with pytest.raises(CollectionError, match=r"missing required column\(s\) \['assets'\]"):
        rasterduck.Collection(t.drop_columns(["assets"]))
    path = tmp_path / "no_id.parquet"
    pq.write_table(t.drop_columns(["id"]), path)
    with pytest.raises(CollectionError, match=r"missing required column\(s\) \['id'\]"):
        rasterduck.open_collection(path)


def test_collection_band_metadata_lacking_fields(scene: Scene) -> None:
    t = scene.collection.to_arrow()
    meta = t["b1_metadata"].combine_chunks()
    slim = pa.StructArray.from_arrays([meta.field("dtype"), meta.field("image_width")], ["dtype", "image_width"])
    t = t.set_column(t.schema.get_field_index("b1_metadata"), "b1_metadata", slim)
    with pytest.raises(CollectionError, match=r"'b1_metadata' lacks fields \['tile_byte_counts'"):
        rasterduck.Collection(t)


def test_collection_with_wrong_types(scene: Scene) -> None:
    t = scene.collection.to_arrow()
    with pytest.raises(CollectionError, match="column 'assets' must be a struct"):
        rasterduck.Collection(t.set_column(t.schema.get_field_index("assets"), "assets", pa.array(["x", "y"])))
    with pytest.raises(CollectionError, match="column 'geometry' must be WKB binary"):
        rasterduck.Collection(t.set_column(t.schema.get_field_index("geometry"), "geometry", pa.array([1, 2])))


def test_open_collection_with_assets_of_a_wrong_type(scene: Scene, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    t = scene.collection.to_arrow()
    path = tmp_path / "bad_assets.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("assets"), "assets", pa.array([1, 2])), path)
    with pytest.raises(CollectionError, match="column 'assets' must be a struct"):
        rasterduck.open_collection(path)


def test_record_with_broken_band_metadata_names_it(scene: Scene) -> None:
    rows = scene.collection.to_arrow().to_pylist()
    rows[1]["b1_metadata"]["tile_offsets"] = rows[1]["b1_metadata"]["tile_offsets"][:3]  # a cut tile table
    t = pa.Table.from_pylist(rows, schema=scene.collection.to_arrow().schema)
    out = rasterduck.Collection(t).read(scene.aois, ["b1"], backend=scene.backend, raise_errors=False)
    errors = [r for r in out if isinstance(r, BaseException)]
    assert errors and all(isinstance(e, RasterduckError) and e.record_id == "scene-1" for e in errors)
    assert all("tile table has 3 entries" in str(e) for e in errors)
    assert sorted(r.geometry_index for r in out if isinstance(r, ReadResult) and r.record_id == "scene-0") == [
        0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ whole-read fuzz
CODECS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "deflate_pred2_u16": ("uint16", 1, {"compress": "DEFLATE", "predictor": 2}),
    "lzw_pred3_f32": ("float32", 1, {"compress": "LZW", "predictor": 3}),
    "zstd_pred2_i16": ("int16", 1, {"compress": "ZSTD", "predictor": 2}),
    "jpeg_rgb_u8": ("uint8", 3, {"compress": "JPEG", "photometric": "RGB"}),
    "webp_rgb_u8": ("uint8", 3, {"compress": "WEBP"}),
    "lerc_f32": ("float32", 1, {"compress": "LERC", "max_z_error": 0}),
    "lzma_u16": ("uint16", 1, {"compress": "LZMA"}),
    "packbits_u8": ("uint8", 1, {"compress": "PACKBITS"}),
    "raw_u16": ("uint16", 1, {}),
}
FUZZ_EXAMPLES = int(os.environ.get("RASTERDUCK_FUZZ_EXAMPLES", "3000")) // 10  # 300 by default
FUZZ_RUNS = {"examples": 0, "results": 0, "errors": 0}
SIDE = 128


class FuzzSet:
    """One small tiled file per codec, served as `<codec>.tif`; a record per file over the pristine bytes."""

    def __init__(self, folder: Path, server: RangeServer) -> None:
        import rasterio
        from rasterio.transform import from_origin

        self.folder, self.server = folder, server
        self.pristine: dict[str, bytes] = {}
        self.tiles: dict[str, list[tuple[int, int]]] = {}
        rng = np.random.default_rng(4)
        for name, (dtype, count, opts) in CODECS.items():
            path = folder / f"{name}.tif"
            xx = np.mgrid[0:SIDE, 0:SIDE][1]
            data = np.stack([(60 + 40 * np.sin(xx / (7.0 + b)) + rng.integers(0, 30, (SIDE, SIDE)))
                             for b in range(count)]).astype(dtype)
            with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=count, dtype=dtype,
                               crs="EPSG:32633", transform=from_origin(500_000.0, 5_800_000.0, 10.0, 10.0),
                               tiled=True, blockxsize=64, blockysize=64, **opts) as dst:
                dst.write(data)
            self.pristine[name] = path.read_bytes()
            self.tiles[name] = [_tile(path, r, c) for r in range(2) for c in range(2)]
        ids = list(CODECS)
        self.collection = rasterduck.Collection(pa.concat_tables([
            build([server.url(f"{n}.tif")], [n], ["b1", "b2", "b3"][: CODECS[n][1]]).to_arrow()
            for n in ids], promote_options="default"))
        self.accessors = {a.id: a for a in self.collection.iterate_rasters()}
        self.aoi = pixel_box(-1, -1, SIDE + 2, SIDE + 2)  # covers the whole raster: every tile is read
        self.backend = DefaultBackend(http=FAST)


@pytest.fixture(scope="module")
def fuzz_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzSet]:
    folder = tmp_path_factory.mktemp("fuzz_read")
    with RangeServer(folder) as srv:
        fs = FuzzSet(folder, srv)
        yield fs
        run_sync(fs.backend.close())


@st.composite
def damaged_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """A codec and its file with one tile's bytes mutated in place (or the file cut inside a tile)."""
    name = draw(st.sampled_from(sorted(CODECS)))
    data = bytearray(FUZZ_SET_BYTES[name])
    off, size = draw(st.sampled_from(FUZZ_SET_TILES[name]))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "junk", "zero-tail", "splice", "cut-file"]))
        pos = off + draw(st.integers(0, size - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "junk":
            junk = draw(st.binary(min_size=1, max_size=64))
            end = min(pos + len(junk), off + size)
            data[pos:end] = junk[: end - pos]
        elif kind == "zero-tail":
            data[pos : off + size] = bytes(off + size - pos)
        elif kind == "splice":  # bytes of another tile of the same file
            o2, s2 = draw(st.sampled_from(FUZZ_SET_TILES[name]))
            n = min(s2, off + size - pos)
            data[pos : pos + n] = FUZZ_SET_BYTES[name][o2 : o2 + n]
        else:
            del data[pos:]
            break
    return name, bytes(data)


FUZZ_SET_BYTES: dict[str, bytes] = {}
FUZZ_SET_TILES: dict[str, list[tuple[int, int]]] = {}


def test_fuzz_the_whole_read(fuzz_set: FuzzSet) -> None:
    """Mutated tiles served over HTTP give our error (naming record, band, URL) or a right-sized result."""
    FUZZ_SET_BYTES.update(fuzz_set.pristine)
    FUZZ_SET_TILES.update(fuzz_set.tiles)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(damaged_file())
    def run(case: tuple[str, bytes]) -> None:
        name, data = case
        (fuzz_set.folder / f"{name}.tif").write_bytes(data)
        dtype, count, _ = CODECS[name]
        FUZZ_RUNS["examples"] += 1
        try:
            [r] = run_sync(fuzz_set.accessors[name].load_bands([fuzz_set.aoi], ["b1"] if count == 1 else
                                                              ["b1", "b2", "b3"], output="results",
                                                              backend=fuzz_set.backend), timeout=60)
        except RasterduckError as exc:
            assert isinstance(exc, DecodeError | FetchError), repr(exc)
            assert exc.record_id == name and exc.url == fuzz_set.server.url(f"{name}.tif"), repr(exc)
            assert exc.band is not None
            FUZZ_RUNS["errors"] += 1
            return
        assert isinstance(r, ReadResult)
        assert r.data.shape == (count, SIDE, SIDE) and r.data.dtype == np.dtype(dtype)
        assert r.valid.shape == (SIDE, SIDE)
        FUZZ_RUNS["results"] += 1

    try:
        run()
    finally:
        for name, data in fuzz_set.pristine.items():
            (fuzz_set.folder / f"{name}.tif").write_bytes(data)
    # the pristine files read exactly like rasterio after all that
    for name in ("deflate_pred2_u16", "lzw_pred3_f32"):
        [r] = run_sync(fuzz_set.accessors[name].load_bands([fuzz_set.aoi], ["b1"], output="results",
                                                          backend=fuzz_set.backend), timeout=60)
        ref = rio_read(fuzz_set.folder / f"{name}.tif", fuzz_set.aoi)
        assert ref is not None
        np.testing.assert_array_equal(r.data, ref[0])
    assert FUZZ_RUNS["examples"] >= FUZZ_EXAMPLES // 2
    assert FUZZ_RUNS["errors"] > 0 and FUZZ_RUNS["results"] > 0  # both outcomes were exercised


def test_fuzz_ran() -> None:
    # quoted in the closing note: how many damaged files the whole-read fuzzer served and read
    print(f"whole-read fuzz executions: {FUZZ_RUNS['examples']} "
          f"(right-size results {FUZZ_RUNS['results']}, our errors {FUZZ_RUNS['errors']})")
