"""Network faults end to end through the Python API (`Collection.read`, `RasterAccessor.load_bands`).

A real range server on 127.0.0.1 serves one generated uint16 COG under three virtual URLs (three
records). Faults are injected by the server (tests/httpserver.py): 5xx/429 answers, connection resets
and early closes mid-body, stalls before the headers and mid-body, a shifted Content-Range, a 200 with
the whole file for a Range request, 404/403/410. Transient faults must be retried to the very pixels of
the fault-free read (itself checked against rasterio); permanent ones must fail at once with an error
naming record, band, URL and status; nothing may hang (pytest-timeout and our own HTTP timeouts) or
leak sockets or file descriptors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely

from rasterduck.errors import FetchError, RasterduckError
from rasterduck.io import DefaultBackend, HttpOptions, get_loop, run_sync

from .httpserver import RangeServer
from .test_faults_helpers import (
    FAST,
    STALLS,
    assert_matches_rasterio,
    build,
    by_pair,
    new_fds,
    open_fds,
    random_aois,
    same_pixels,
    settle,
    sockets,
    write_cog,
)

pytestmark = pytest.mark.timeout(60)
RECORDS = 3
FILE = "cog.tif"


class Scene:
    """The served file, the server, a collection of three records over it and the fault-free results."""

    def __init__(self, folder: Path, server: RangeServer) -> None:
        self.path = write_cog(folder / FILE)
        self.server = server
        self.ids = [f"scene-{i}" for i in range(RECORDS)]
        self.urls = [server.vurl(f"s{i}", FILE) for i in range(RECORDS)]
        self.collection = build(self.urls, self.ids)
        # a dozen small AOIs, one across the raster's right edge, one that misses the raster
        self.aois = [*random_aois(12, seed=5), shapely.box(*_edge_box(self)), shapely.box(13.0, 40.0, 13.01, 40.01)]
        backend = DefaultBackend(http=FAST)
        try:
            self.baseline = by_pair(self.collection.read(self.aois, ["b1"], backend=backend))
        finally:
            run_sync(backend.close())

    def backend(self, http: HttpOptions = FAST) -> DefaultBackend:
        """A backend that sends several requests per record (small coalesced ranges)."""
        return DefaultBackend(http=http, max_gap=0, max_size=48 * 1024)

    def accessor(self, record_id: str) -> Any:
        return next(a for a in self.collection.iterate_rasters() if a.id == record_id)


def _edge_box(scene: Scene) -> tuple[float, float, float, float]:
    from .test_faults_helpers import pixel_box

    return pixel_box(505.5, 200.2, 20, 9).bounds  # lon/lat bounds of a box that leaves the raster


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    folder = tmp_path_factory.mktemp("faults")
    with RangeServer(folder) as srv:
        yield Scene(folder, srv)


@pytest.fixture
def srv(scene: Scene) -> Iterator[RangeServer]:
    """The scene's server, idle, with no faults and zeroed counters (also after the test)."""
    from .test_faults_helpers import idle_server

    yield from idle_server(scene.server)


@pytest.fixture
def backends(scene: Scene) -> Iterator[list[DefaultBackend]]:
    """Backends made by a test, closed after it."""
    made: list[DefaultBackend] = []
    yield made
    for b in made:
        run_sync(b.close())


def _read(scene: Scene, backend: DefaultBackend, entry: str, **kw: Any) -> list[Any]:
    """Read every (record, AOI) pair through Collection.read or through each record's load_bands."""
    if entry == "collection":
        return scene.collection.read(scene.aois, ["b1"], backend=backend, **kw)
    out: list[Any] = []
    for rid in scene.ids:
        acc = scene.accessor(rid)
        results = run_sync(acc.load_bands(scene.aois, ["b1"], output="results", backend=backend), timeout=60)
        for i, r in enumerate(results):
            if r is not None:
                r.geometry_index = i
                out.append(r)
    return out


# ------------------------------------------------------------------------------------------ oracle
def test_fault_free_read_equals_rasterio(scene: Scene) -> None:
    for rid in scene.ids:
        results = [scene.baseline.get((rid, i)) for i in range(len(scene.aois))]
        assert_matches_rasterio(results, scene.path, scene.aois)
    assert len(scene.baseline) == RECORDS * (len(scene.aois) - 1)  # the far AOI misses every record


# ------------------------------------------------------------------------------------------ transient
TRANSIENT: list[tuple[str, dict[str, Any], HttpOptions]] = [
    ("status-500", {"kind": "status", "status": 500}, FAST),
    ("status-502", {"kind": "status", "status": 502}, FAST),
    ("status-503", {"kind": "status", "status": 503}, FAST),
    ("status-429-retry-after", {"kind": "status", "status": 429, "retry_after": "0"}, FAST),
    ("reset-mid-body", {"kind": "reset"}, FAST),
    ("truncated-body", {"kind": "truncate"}, FAST),
    ("stall-before-headers", {"kind": "stall", "stall": 30.0}, STALLS),
    ("stall-mid-body", {"kind": "stall", "stall": 30.0, "after_bytes": 1000}, STALLS),
    ("wrong-content-range", {"kind": "bad_range", "shift": 16}, FAST),
]


@pytest.mark.parametrize("entry", ["collection", "accessor"])
@pytest.mark.parametrize(("name", "fault", "http"), TRANSIENT, ids=[t[0] for t in TRANSIENT])
def test_transient_fault_is_retried_to_identical_pixels(scene: Scene, srv: RangeServer,
                                                        backends: list[DefaultBackend], entry: str, name: str,
                                                        fault: dict[str, Any], http: HttpOptions) -> None:
    opts = dict(fault)
    kind = opts.pop("kind")
    rule = srv.add_fault(kind, path="/v/s1/*", times=2, **opts)
    backend = scene.backend(http)
    backends.append(backend)
    got = by_pair(_read(scene, backend, entry))
    same_pixels(got, scene.baseline)
    assert rule.fired == 2
    assert backend.stats.retries == 2  # each faulty answer cost exactly one retry
    faulted = [r for r in srv.log if r.fault == kind]
    assert len(faulted) == 2 and all(r.path == "/v/s1/" + FILE for r in faulted)


def test_retry_after_is_waited_for(scene: Scene, srv: RangeServer, backends: list[DefaultBackend]) -> None:
    srv.add_fault("status", path="/v/s2/*", status=429, retry_after="1", times=1)
    backend = DefaultBackend(http=FAST)  # one request per record: the retry is the next request for s2
    backends.append(backend)
    same_pixels(by_pair(scene.collection.read(scene.aois, ["b1"], backend=backend)), scene.baseline)
    s2 = [r for r in srv.log if r.path.startswith("/v/s2/")]
    [faulted] = [r for r in s2 if r.status == 429]
    retried = max(s2, key=lambda r: r.started)  # the retry is the last request for s2
    assert retried.status == 206 and backend.stats.retries == 1
    assert retried.started - faulted.finished >= 0.9  # the client slept for Retry-After (a lower bound only)


def test_200_for_a_range_reads_only_the_prefix(scene: Scene, srv: RangeServer,
                                               backends: list[DefaultBackend]) -> None:
    srv.add_fault("ignore_range", path="/v/s0/*")
    backend = scene.backend()
    backends.append(backend)
    same_pixels(by_pair(scene.collection.read(scene.aois, ["b1"], backend=backend)), scene.baseline)
    assert backend.stats.retries == 0
    s0 = [r for r in srv.log if r.path.startswith("/v/s0/")]
    assert s0 and all(r.status == 200 for r in s0)
    # that only the prefix is read off the socket (a 64 MiB file) is test_io_http's
    # test_200_for_range_reads_only_a_prefix; this file fits in the socket buffers


def test_200_for_a_range_beyond_the_limit_fails_naming_the_pair(scene: Scene, srv: RangeServer,
                                                                backends: list[DefaultBackend]) -> None:
    srv.add_fault("ignore_range", path="/v/s0/*")
    backend = scene.backend(HttpOptions(ignored_range_max=1024, max_attempts=3, backoff_base=0.001))
    backends.append(backend)
    with pytest.raises(FetchError, match="ignores Range") as info:
        scene.collection.read(scene.aois, ["b1"], backend=backend)
    err = info.value
    assert (err.record_id, err.band, err.url, err.status) == ("scene-0", "b1", scene.urls[0], 200)
    assert not err.transient and backend.stats.retries == 0


# ------------------------------------------------------------------------------------------ permanent
@pytest.mark.parametrize("entry", ["collection", "accessor"])
@pytest.mark.parametrize("status", [404, 403, 410])
def test_permanent_status_fails_fast_naming_record_band_url(scene: Scene, srv: RangeServer,
                                                            backends: list[DefaultBackend], status: int,
                                                            entry: str) -> None:
    srv.add_fault("status", path="/v/s1/*", status=status)
    backend = scene.backend()
    backends.append(backend)
    with pytest.raises(FetchError) as info:
        _read(scene, backend, entry)
    err = info.value
    assert (err.record_id, err.band, err.url, err.status, err.transient) == ("scene-1", "b1", scene.urls[1],
                                                                              status, False)
    text = str(err)
    assert f"HTTP {status}" in text and "record 'scene-1'" in text and "band 'b1'" in text
    assert scene.urls[1] in text
    assert backend.stats.retries == 0  # not retried: every request for s1 was answered once
    assert all(r.fault == "status" for r in srv.log if r.path.startswith("/v/s1/"))


def test_failed_pairs_come_back_in_place_with_their_own_error(scene: Scene, srv: RangeServer,
                                                              backends: list[DefaultBackend]) -> None:
    srv.add_fault("status", path="/v/s1/*", status=404)
    backend = scene.backend()
    backends.append(backend)
    out = scene.collection.read(scene.aois, ["b1"], backend=backend, raise_errors=False)
    errors = [r for r in out if isinstance(r, BaseException)]
    assert len(errors) == len(scene.aois) - 1  # every pair of scene-1 (the far AOI misses before any I/O)
    assert all(isinstance(e, FetchError) and e.record_id == "scene-1" and e.status == 404 for e in errors)
    good = by_pair(out)
    same_pixels(good, {k: v for k, v in scene.baseline.items() if k[0] != "scene-1"})


def test_a_shared_url_names_each_record(scene: Scene, srv: RangeServer, backends: list[DefaultBackend]) -> None:
    # two records point at one URL: the failed tile is shared, the errors must not be
    twins = build([srv.vurl("twin", FILE)] * 2, ["twin-a", "twin-b"])
    srv.add_fault("status", path="/v/twin/*", status=403)
    backend = scene.backend()
    backends.append(backend)
    out = twins.read(scene.aois[:4], ["b1"], backend=backend, raise_errors=False)
    assert sorted(e.record_id for e in out) == ["twin-a"] * 4 + ["twin-b"] * 4
    assert len({id(e) for e in out}) == 8
    assert all(f"record '{e.record_id}'" in str(e) for e in out)


def test_retries_exhausted_is_a_transient_error_naming_the_pair(scene: Scene, srv: RangeServer,
                                                               backends: list[DefaultBackend]) -> None:
    srv.add_fault("status", path="/v/s2/*", status=503)
    backend = scene.backend(HttpOptions(max_attempts=3, backoff_base=0.001, backoff_max=0.002))
    backends.append(backend)
    with pytest.raises(FetchError, match="giving up after 3 attempts: HTTP 503") as info:
        scene.collection.read(scene.aois, ["b1"], backend=backend)
    err = info.value
    assert (err.record_id, err.band, err.url, err.status, err.transient) == ("scene-2", "b1", scene.urls[2], 503,
                                                                              True)


def test_a_server_that_never_answers_is_bounded(scene: Scene, srv: RangeServer,
                                                backends: list[DefaultBackend]) -> None:
    srv.add_fault("stall", path="/v/s0/*", stall=60.0)
    backend = scene.backend(HttpOptions(first_byte_timeout=0.2, read_timeout=0.2, max_attempts=2,
                                        backoff_base=0.001))
    backends.append(backend)
    with pytest.raises(FetchError, match=r"no response within 0\.2s") as info:
        scene.collection.read(scene.aois, ["b1"], backend=backend)
    assert info.value.record_id == "scene-0" and info.value.url == scene.urls[0]
    assert srv.wait_idle(timeout=5)  # our side hung up, so the stalled handlers ended early


def test_a_whole_attempt_is_bounded(scene: Scene, srv: RangeServer, backends: list[DefaultBackend]) -> None:
    # generous per-read timeouts: the cap on the whole attempt is what ends a body that stops halfway
    srv.add_fault("stall", stall=30.0, after_bytes=100)
    backend = scene.backend(HttpOptions(attempt_timeout=0.3, read_timeout=20.0, max_attempts=2,
                                        backoff_base=0.001))
    backends.append(backend)
    with pytest.raises(FetchError, match=r"attempt exceeded 0\.3s") as info:
        scene.collection.read(scene.aois[:2], ["b1"], backend=backend)
    assert info.value.record_id in scene.ids and info.value.band == "b1"


def test_the_backend_is_usable_after_failures(scene: Scene, srv: RangeServer,
                                              backends: list[DefaultBackend]) -> None:
    backend = scene.backend()
    backends.append(backend)
    srv.add_fault("status", path="/v/s1/*", status=404)
    with pytest.raises(FetchError):
        scene.collection.read(scene.aois, ["b1"], backend=backend)
    srv.clear_faults()
    same_pixels(by_pair(scene.collection.read(scene.aois, ["b1"], backend=backend)), scene.baseline)


def test_a_custom_backend_raising_anything_is_named(scene: Scene) -> None:
    class Broken:
        async def read_ranges(self, url: str, ranges: Any) -> list[bytes]:
            raise RuntimeError("the transport fell over")

    with pytest.raises(RasterduckError, match="RuntimeError: the transport fell over") as info:
        scene.collection.read(scene.aois[:2], ["b1"], backend=Broken())
    assert info.value.record_id == "scene-0" and info.value.band == "b1" and info.value.url == scene.urls[0]


# ------------------------------------------------------------------------------------------ resources
def test_no_leaked_connections_or_fds_after_faults(tmp_path: Path) -> None:
    """On a server of its own: faults of every kind, then close; every socket and descriptor is gone."""
    get_loop()
    write_cog(tmp_path / FILE)
    with RangeServer(tmp_path) as server:
        ids = [f"scene-{i}" for i in range(RECORDS)]
        collection = build([server.vurl(f"s{i}", FILE) for i in range(RECORDS)], ids)
        aois = random_aois(20, seed=9)
        assert server.wait_idle(connections=True)
        before_sockets, before_fds = sockets(), open_fds()
        backend = DefaultBackend(http=STALLS, max_gap=0, max_size=32 * 1024, max_concurrent=8)
        expected = by_pair(collection.read(aois, ["b1"], backend=backend))
        for kind, opts in [("reset", {}), ("truncate", {}), ("stall", {"stall": 30.0}),
                           ("stall", {"stall": 30.0, "after_bytes": 500}), ("status", {"status": 503}),
                           ("bad_range", {}), ("ignore_range", {})]:
            server.add_fault(kind, times=2, **opts)
            same_pixels(by_pair(collection.read(aois, ["b1"], backend=backend)), expected)
            server.clear_faults()
        server.add_fault("status", path="/v/s1/*", status=404)
        with pytest.raises(FetchError):
            collection.read(aois, ["b1"], backend=backend)
        assert sockets() - before_sockets  # the pool keeps keep-alive connections until closed
        run_sync(backend.close())
        assert server.wait_idle(connections=True)  # the server saw every connection end
        assert settle(lambda: not sockets() - before_sockets), sockets() - before_sockets
        assert settle(lambda: not new_fds(before_fds)), new_fds(before_fds)
