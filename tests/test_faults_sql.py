"""Network faults and bad input through SQL, with only the public surface: `rasterduck.connect`,
`rasterduck.attach` and the `load_bands` / `load_bands_safe` functions in queries.

The same generated uint16 COG as test_faults.py, served by a real range server under three virtual
URLs (three records), joined with a few AOIs. Transient faults must give the very rows of the
fault-free query (itself checked against rasterio); permanent ones must fail the query with a message
naming record, band, URL and status, after which the same connection keeps working; nothing may hang
or leak sockets or file descriptors. Bad input gives NULL (no overlap, NULL arguments) or a clear
error, never a crash of the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import shapely

import rasterduck
from rasterduck.errors import CollectionError
from rasterduck.io import DefaultBackend, HttpOptions, get_loop, run_sync

from .httpserver import RangeServer
from .test_faults_helpers import (
    FAST,
    STALLS,
    build,
    new_fds,
    open_fds,
    pixel_box,
    random_aois,
    rio_read,
    settle,
    sockets,
    write_cog,
)

pytestmark = pytest.mark.timeout(60)
FILE = "cog.tif"
RECORDS = 3
QUERY = ("SELECT r.id, a.aid, {fn}(r, a.geom, ['b1']) AS px FROM scenes r, aois a "
         "{where} ORDER BY r.id, a.aid")
Rows = dict[tuple[str, int], Any]


class Scene:
    """The served file, its server, the collection and AOIs, and the fault-free query's rows."""

    def __init__(self, folder: Path, server: RangeServer) -> None:
        self.path = write_cog(folder / FILE)
        self.server = server
        self.ids = [f"scene-{i}" for i in range(RECORDS)]
        self.urls = [server.vurl(f"s{i}", FILE) for i in range(RECORDS)]
        self.collection = build(self.urls, self.ids)
        self.aois = [*random_aois(8, seed=11), pixel_box(505.5, 100.0, 20, 9)]  # the last leaves the raster
        con, backend = self.connect()
        try:
            self.baseline = query(con)
        finally:
            close(con, backend)

    def connect(self, http: HttpOptions = FAST) -> tuple[duckdb.DuckDBPyConnection, DefaultBackend]:
        """A new in-memory database with rasterduck, its own backend, the collection and the AOIs."""
        backend = DefaultBackend(http=http, max_gap=0, max_size=48 * 1024)
        con = rasterduck.connect(backend=backend)
        rasterduck.attach(con, "scenes", self.collection)
        aois = pa.table({"aid": list(range(len(self.aois))),
                         "geom": pa.array([g.wkb for g in self.aois], pa.binary())})
        con.register("aois_arrow", aois)
        con.execute("CREATE TABLE aois AS SELECT * FROM aois_arrow")
        con.unregister("aois_arrow")
        return con, backend


def query(con: duckdb.DuckDBPyConnection, fn: str = "load_bands", where: str = "") -> Rows:
    """Rows of the join keyed by (record id, AOI id): the load_bands value as a Python dict (or None)."""
    return {(rid, aid): px for rid, aid, px in con.execute(QUERY.format(fn=fn, where=where)).fetchall()}


def close(con: duckdb.DuckDBPyConnection, backend: DefaultBackend) -> None:
    con.close()
    run_sync(backend.close())


def pixels(px: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(data, valid) of one load_bands value."""
    if px is None:
        return None
    data, valid = rasterduck.to_numpy(px, masked=False)
    return data, valid


def assert_same_rows(got: Rows, want: Rows) -> None:
    """Same keys; every row holds equal pixels, valid masks, shape and transform."""
    assert got.keys() == want.keys()
    for key, px in want.items():
        a, b = pixels(got[key]), pixels(px)
        if b is None:
            assert a is None, key
            continue
        assert a is not None, key
        assert a[0].dtype == b[0].dtype, key
        np.testing.assert_array_equal(a[0], b[0], err_msg=str(key))
        np.testing.assert_array_equal(a[1], b[1], err_msg=str(key))
        assert got[key]["transform"] == px["transform"], key


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("faults_sql")
    with RangeServer(folder) as srv:
        yield Scene(folder, srv)


@pytest.fixture
def srv(scene: Scene) -> Iterator[RangeServer]:
    """The scene's server, idle, with no faults and zeroed counters (also after the test)."""
    from .test_faults_helpers import idle_server

    yield from idle_server(scene.server)


@pytest.fixture
def connect(scene: Scene) -> Iterator[Any]:
    """Make connections (closed with their backends after the test)."""
    made: list[tuple[duckdb.DuckDBPyConnection, DefaultBackend]] = []

    def make(http: HttpOptions = FAST) -> tuple[duckdb.DuckDBPyConnection, DefaultBackend]:
        made.append(scene.connect(http))
        return made[-1]

    yield make
    for con, backend in made:
        close(con, backend)


# ------------------------------------------------------------------------------------------ oracle
def test_fault_free_query_equals_rasterio(scene: Scene) -> None:
    assert len(scene.baseline) == RECORDS * len(scene.aois)
    for (rid, aid), px in scene.baseline.items():
        ref = rio_read(scene.path, scene.aois[aid])
        got = pixels(px)
        assert ref is not None and got is not None, (rid, aid)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])


# ------------------------------------------------------------------------------------------ transient
TRANSIENT: list[tuple[str, dict[str, Any], HttpOptions]] = [
    ("status-500", {"kind": "status", "status": 500}, FAST),
    ("status-503", {"kind": "status", "status": 503}, FAST),
    ("status-429-retry-after", {"kind": "status", "status": 429, "retry_after": "0"}, FAST),
    ("reset-mid-body", {"kind": "reset"}, FAST),
    ("truncated-body", {"kind": "truncate"}, FAST),
    ("stall-before-headers", {"kind": "stall", "stall": 30.0}, STALLS),
    ("stall-mid-body", {"kind": "stall", "stall": 30.0, "after_bytes": 1000}, STALLS),
    ("wrong-content-range", {"kind": "bad_range", "shift": 16}, FAST),
    ("200-for-range", {"kind": "ignore_range"}, FAST),
]


@pytest.mark.parametrize(("name", "fault", "http"), TRANSIENT, ids=[t[0] for t in TRANSIENT])
def test_transient_faults_give_the_fault_free_rows(scene: Scene, srv: RangeServer, connect: Any, name: str,
                                                   fault: dict[str, Any], http: HttpOptions) -> None:
    opts = dict(fault)
    kind = opts.pop("kind")
    rule = srv.add_fault(kind, path="/v/s1/*", times=2, **opts)
    con, backend = connect(http)
    assert_same_rows(query(con), scene.baseline)
    assert rule.fired == 2
    assert backend.stats.retries == (0 if kind == "ignore_range" else 2)


# ------------------------------------------------------------------------------------------ permanent
@pytest.mark.parametrize("status", [404, 403])
def test_permanent_fault_fails_the_query_naming_the_pair(scene: Scene, srv: RangeServer, connect: Any,
                                                         status: int) -> None:
    srv.add_fault("status", path="/v/s1/*", status=status)
    con, backend = connect()
    with pytest.raises(duckdb.Error) as info:
        query(con)
    text = str(info.value)
    assert f"FetchError: HTTP {status}" in text
    assert "record 'scene-1'" in text and "band 'b1'" in text and scene.urls[1] in text
    assert backend.stats.retries == 0
    # the process and the connection survive: other queries work, also reads of the other records
    assert con.execute("SELECT 42").fetchall() == [(42,)]
    others = query(con, where="WHERE r.id <> 'scene-1'")
    assert_same_rows(others, {k: v for k, v in scene.baseline.items() if k[0] != "scene-1"})
    # load_bands_safe turns the failure into a per-row error and keeps the other rows
    safe = query(con, fn="load_bands_safe")
    for (rid, _aid), px in safe.items():
        if rid == "scene-1":
            assert px["data"] is None and f"HTTP {status}" in px["error"] and "record 'scene-1'" in px["error"]
        else:
            assert px["error"] is None
    srv.clear_faults()
    assert_same_rows(query(con), scene.baseline)


def test_retries_exhausted_fail_the_query(scene: Scene, srv: RangeServer, connect: Any) -> None:
    srv.add_fault("status", path="/v/s2/*", status=503)
    con, _ = connect(HttpOptions(max_attempts=3, backoff_base=0.001, backoff_max=0.002))
    with pytest.raises(duckdb.Error, match=r"giving up after 3 attempts: HTTP 503.*record 'scene-2', band 'b1'"):
        query(con)
    assert con.execute("SELECT count(*) FROM scenes").fetchall() == [(RECORDS,)]


def test_a_server_that_never_answers_does_not_hang_the_query(scene: Scene, srv: RangeServer,
                                                             connect: Any) -> None:
    srv.add_fault("stall", path="/v/s0/*", stall=60.0)
    con, _ = connect(HttpOptions(first_byte_timeout=0.2, read_timeout=0.2, max_attempts=2, backoff_base=0.001))
    with pytest.raises(duckdb.Error, match=r"no response within 0\.2s.*record 'scene-0'"):
        query(con)
    srv.clear_faults()
    assert_same_rows(query(con), scene.baseline)


def test_no_leaked_connections_or_fds(tmp_path: Path) -> None:
    """On a server of its own: a faulty query, a failing one, close; every socket and descriptor is gone."""
    get_loop()
    write_cog(tmp_path / FILE)
    with RangeServer(tmp_path) as server:
        local = Scene(tmp_path, server)
        assert server.wait_idle(connections=True)
        before_sockets, before_fds = sockets(), open_fds()
        con, backend = local.connect(STALLS)
        for kind, opts in [("reset", {}), ("stall", {"stall": 30.0}), ("truncate", {}), ("status", {"status": 500})]:
            server.add_fault(kind, times=3, **opts)
            assert_same_rows(query(con), local.baseline)
            server.clear_faults()
        server.add_fault("status", path="/v/s1/*", status=404)
        with pytest.raises(duckdb.Error):
            query(con)
        close(con, backend)
        assert server.wait_idle(connections=True)
        assert settle(lambda: not sockets() - before_sockets), sockets() - before_sockets
        assert settle(lambda: not new_fds(before_fds)), new_fds(before_fds)


# ------------------------------------------------------------------------------------------ bad input
def one(con: duckdb.DuckDBPyConnection, geom_sql: str, bands_sql: str = "['b1']", fn: str = "load_bands",
        record: str = "r", where: str = "r.id = 'scene-0'") -> Any:
    """load_bands of one record with an AOI given as SQL."""
    rows = con.execute(f"SELECT {fn}({record}, {geom_sql}, {bands_sql}) FROM scenes r WHERE {where}").fetchall()
    return rows[0][0]


def test_null_arguments_give_null(scene: Scene, connect: Any) -> None:
    con, _ = connect()
    wkb = f"from_hex('{scene.aois[0].wkb_hex}')"
    assert one(con, "NULL::BLOB") is None
    assert one(con, wkb, "NULL::VARCHAR[]") is None
    assert one(con, wkb, record="CASE WHEN false THEN r END") is None  # a NULL row, as a LEFT JOIN gives
    # an untyped NULL is not a row: a clear error, not a crash
    with pytest.raises(duckdb.Error, match="must be a collection row"):
        one(con, wkb, record="NULL")
    assert pixels(one(con, wkb)) is not None  # the same call with real arguments reads


def test_aoi_outside_the_raster_gives_null(scene: Scene, connect: Any) -> None:
    con, _ = connect()
    far = shapely.box(14.0, 51.0, 14.01, 51.01)  # lon/lat inside UTM 33N, far from the raster
    assert one(con, f"from_hex('{far.wkb_hex}')") is None


@pytest.mark.parametrize(
    ("geom_sql", "message"),
    [
        ("from_hex('0103000000')", "malformed WKB"),  # a polygon header cut short
        ("from_hex('DEADBEEF00')", "not WKB"),
        (f"from_hex('{shapely.Polygon().wkb_hex}')", "empty geometry"),
        ("'POLYGON((0 0, 1 1'", "malformed WKT"),
    ],
    ids=["truncated-wkb", "garbage-blob", "empty-polygon", "broken-wkt"],
)
def test_bad_aois_fail_with_a_clear_error(scene: Scene, connect: Any, geom_sql: str, message: str) -> None:
    con, _ = connect()
    with pytest.raises(duckdb.Error, match=message) as info:
        one(con, geom_sql)
    assert "GeometryError" in str(info.value) and "record 'scene-0'" in str(info.value)
    row = one(con, geom_sql, fn="load_bands_safe")
    assert row["data"] is None and message in row["error"]
    assert con.execute("SELECT 1").fetchall() == [(1,)]


def test_unknown_band_names_band_and_record(scene: Scene, connect: Any) -> None:
    con, _ = connect()
    with pytest.raises(duckdb.Error, match=r"band 'nir'.*record 'scene-0'|record 'scene-0'.*band 'nir'"):
        one(con, f"from_hex('{scene.aois[0].wkb_hex}')", "['b1', 'nir']")


def test_swapped_lat_lon_is_reported(scene: Scene, connect: Any) -> None:
    con, _ = connect()
    swapped = shapely.transform(scene.aois[0], lambda xy: xy[:, ::-1])
    with pytest.raises(duckdb.Error, match="latitude and longitude swapped") as info:
        one(con, f"from_hex('{swapped.wkb_hex}')")
    assert "record 'scene-0'" in str(info.value)


def test_huge_aoi_hits_the_pixel_budget(scene: Scene, srv: RangeServer, connect: Any) -> None:
    con, _ = connect()
    whole = pixel_box(-10, -10, 600, 600).wkb_hex  # covers the raster: 512 x 512 uint16 = 0.5 MB
    con.execute("SELECT rasterduck_set('pixel_budget', '100KB')").fetchall()
    with pytest.raises(duckdb.Error, match=r"PixelBudgetExceeded: .*over the budget of 0.1 MB"):
        one(con, f"from_hex('{whole}')")
    assert srv.requests == 0  # refused while planning, before any byte moved
    con.execute("SELECT rasterduck_set('pixel_budget', '2MB')").fetchall()
    got = pixels(one(con, f"from_hex('{whole}')"))
    assert got is not None and got[0].shape == (1, 512, 512)


def test_corrupt_tile_names_record_band_and_url(scene: Scene, tmp_path: Path, connect: Any) -> None:
    import rasterio

    bad = tmp_path / "corrupt.tif"
    data = bytearray(scene.path.read_bytes())
    with rasterio.open(scene.path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    data[offset : offset + size] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    bad.write_bytes(bytes(data))
    with RangeServer(tmp_path) as server:
        url = server.url("corrupt.tif")
        broken = build([url], ["broken-0"])
        con, _ = connect()
        rasterduck.attach(con, "broken", broken)
        corner = pixel_box(2, 2, 5, 5).wkb_hex  # inside tile (0, 0)
        with pytest.raises(duckdb.Error, match="DecodeError") as info:
            con.execute(f"SELECT load_bands(r, from_hex('{corner}'), ['b1']) FROM broken r").fetchall()
        text = str(info.value)
        assert "record 'broken-0'" in text and "band 'b1'" in text and url in text
        middle = pixel_box(200, 200, 5, 5)  # tiles that are intact still read
        rows = con.execute(f"SELECT load_bands(r, from_hex('{middle.wkb_hex}'), ['b1']) FROM broken r").fetchall()
        ref = rio_read(scene.path, middle)
        got = pixels(rows[0][0])
        assert ref is not None and got is not None
        np.testing.assert_array_equal(got[0], ref[0])


def _broken(tmp_path: Path, scene: Scene, how: str) -> Path:
    """The scene's collection written to Parquet with one defect."""
    import pyarrow.parquet as pq

    t = scene.collection.to_arrow()
    if how == "no-assets":
        t = t.drop_columns(["assets"])
    elif how == "metadata-without-tiles":
        meta = t["b1_metadata"].combine_chunks()
        slim = pa.StructArray.from_arrays([meta.field("dtype"), meta.field("image_width")], ["dtype", "image_width"])
        t = t.set_column(t.schema.get_field_index("b1_metadata"), "b1_metadata", slim)
    elif how == "assets-not-a-struct":
        t = t.set_column(t.schema.get_field_index("assets"), "assets", pa.array([1] * t.num_rows))
    path = tmp_path / f"{how}.parquet"
    pq.write_table(t, path)
    return path


@pytest.mark.parametrize(("how", "message", "at_attach"), [
    ("no-assets", r"BandNotFoundError: band 'b1' not found .*record 'scene-0', band 'b1'",
     r"missing required column\(s\) \['assets'\]"),
    ("metadata-without-tiles", r"CollectionError: band metadata lacks a required field .*record 'scene-0', band 'b1'",
     r"'b1_metadata' lacks fields \['tile_byte_counts', 'tile_height', 'tile_offsets'"),
])
def test_broken_collection_gives_a_clear_error(scene: Scene, tmp_path: Path, connect: Any, how: str,
                                               message: str, at_attach: str) -> None:
    con, _ = connect()
    path = _broken(tmp_path, scene, how)
    with pytest.raises(CollectionError, match=at_attach):  # attach checks the schema first
        rasterduck.attach(con, "broken", path)
    # read without attach: the row's error names record and band
    aoi = scene.aois[0].wkb_hex
    with pytest.raises(duckdb.Error, match=message):
        con.execute(f"SELECT load_bands(r, from_hex('{aoi}'), ['b1']) FROM read_parquet('{path}') r "
                    "WHERE id = 'scene-0'").fetchall()
    assert con.execute("SELECT count(*) FROM scenes").fetchall() == [(RECORDS,)]


def test_assets_of_a_wrong_type_are_refused_at_attach(scene: Scene, tmp_path: Path, connect: Any) -> None:
    con, _ = connect()
    with pytest.raises(CollectionError, match="assets"):
        rasterduck.attach(con, "broken", _broken(tmp_path, scene, "assets-not-a-struct"))
