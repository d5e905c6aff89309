"""Soak: 10,000 (record, AOI) pairs read under a steady 5 % of transient faults give exactly the pixels
of the fault-free run, through SQL (one query) and through `Collection.read` (one batch).

20 records are 20 virtual URLs (`/v/<tag>/cog.tif`) of one generated 2048 x 2048 uint16 COG (256 tiles
of 128 x 128); 500 small AOIs cover it. The backend sends one request per tile (no coalescing), so a
run makes thousands of requests. The server injects, with seeded rates that add up to 5 % of all
requests: 503, 429 (Retry-After: 0), connection resets mid-body, early closes (truncated bodies),
shifted Content-Ranges and mid-body stalls. The numbers (pairs, requests, faults, retries, seconds)
are printed for the closing note; run with -s to see them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import rasterduck
from rasterduck.io import DefaultBackend, run_sync

from .httpserver import Fault, RangeServer
from .test_faults_helpers import FAST, build, by_pair, random_aois, rio_read, same_pixels, write_cog

pytestmark = pytest.mark.timeout(300)
SCENES, AOIS, SIDE = 20, 500, 2048
FAULT_RATE = 0.05
KINDS: list[tuple[str, dict[str, Any]]] = [
    ("status", {"status": 503}),
    ("status", {"status": 429, "retry_after": "0"}),
    ("reset", {}),
    ("truncate", {}),
    ("bad_range", {"shift": 8}),
    ("stall", {"stall": 30.0, "after_bytes": 2000}),
]
# each rule fires with p when no earlier one did: 1 - (1 - p) ** 6 = 5 %
PER_KIND = 1.0 - (1.0 - FAULT_RATE) ** (1.0 / len(KINDS))
# a stalled body costs one read timeout; SQL runs its chunks one after the other, so keep it short
SOAK_HTTP = replace(FAST, read_timeout=0.3, first_byte_timeout=2.0, max_attempts=10)


@dataclass
class Soak:
    path: Path
    server: RangeServer
    collection: rasterduck.Collection
    aois: list[Any]


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    folder = tmp_path_factory.mktemp("soak")
    path = write_cog(folder / "cog.tif", width=SIDE, height=SIDE, seed=3)
    with RangeServer(folder) as srv:
        ids = [f"scene-{k:02d}" for k in range(SCENES)]
        collection = build([srv.vurl(f"t{k:02d}", "cog.tif") for k in range(SCENES)], ids)
        yield Soak(path, srv, collection, random_aois(AOIS, seed=21, width=SIDE, height=SIDE, max_px=12))


def _backend(*, faults: bool) -> DefaultBackend:
    """Every tile its own request. Without faults nothing stalls: a generous read timeout keeps a loaded
    machine from causing retries, so the fault-free run can require none (a CI run once saw 2 at 0.3 s)."""
    http = SOAK_HTTP if faults else replace(SOAK_HTTP, read_timeout=10.0)
    return DefaultBackend(http=http, max_gap=0, max_size=1)


def _inject(srv: RangeServer) -> list[Fault]:
    return [srv.add_fault(kind, rate=PER_KIND, seed=100 + i, **opts) for i, (kind, opts) in enumerate(KINDS)]


def _report(what: str, pairs: int, srv: RangeServer, faults: list[Fault], backend: DefaultBackend,
            seconds: float, clean_seconds: float) -> None:
    fired = sum(f.fired for f in faults)
    stats = backend.stats.snapshot()
    print(f"\nsoak {what}: pairs={pairs} requests={srv.requests} faults={fired} "
          f"({100.0 * fired / max(srv.requests, 1):.2f} % of requests; "
          + ", ".join(f"{f.kind}{'-' + str(f.status) if f.kind == 'status' else ''}={f.fired}" for f in faults)
          + f") retries={stats['retries']} identical=yes seconds={seconds:.1f} (fault-free {clean_seconds:.1f})")


def _check_retries(backend: DefaultBackend, fired: int) -> None:
    """Each faulty answer cost one retry; a read timeout on a loaded machine may add a few more."""
    retries = backend.stats.retries
    assert fired <= retries <= fired + 20, (fired, retries)


def _fresh(srv: RangeServer) -> None:
    assert srv.wait_idle(timeout=10)
    srv.reset()


def test_soak_sql(soak: Soak) -> None:
    srv = soak.server
    table = pa.table({"aid": np.arange(len(soak.aois)), "geom": pa.array([g.wkb for g in soak.aois], pa.binary())})
    sql = ("SELECT r.id, a.aid, load_bands(r, a.geom, ['b1']) AS px FROM scenes r, aois a "
           "ORDER BY r.id, a.aid")

    def run(faults: bool) -> tuple[pa.Table, DefaultBackend, float]:
        backend = _backend(faults=faults)
        con = rasterduck.connect(backend=backend)
        try:
            rasterduck.attach(con, "scenes", soak.collection)
            con.register("aois_arrow", table)
            con.execute("CREATE TABLE aois AS SELECT * FROM aois_arrow")
            t0 = time.perf_counter()
            rel = con.sql(sql)
            out = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()  # DuckDB 2.x / 1.x
            return out, backend, time.perf_counter() - t0
        finally:
            con.close()
            run_sync(backend.close())

    _fresh(srv)
    clean, clean_backend, clean_s = run(False)
    assert clean.num_rows == SCENES * AOIS
    assert clean_backend.stats.retries == 0
    _fresh(srv)
    faults = _inject(srv)
    faulty, backend, faulty_s = run(True)
    srv.clear_faults()
    assert faulty.equals(clean)  # every row: same pixels, masks, windows, transforms
    fired = sum(f.fired for f in faults)
    assert 0.035 < fired / srv.requests < 0.065
    _check_retries(backend, fired)
    _report("sql", faulty.num_rows, srv, faults, backend, faulty_s, clean_s)
    # the fault-free rows are rasterio's pixels (a sample across records and AOIs)
    rows = clean.to_pylist()
    for k in range(0, len(rows), 97):
        row = rows[k]
        ref = rio_read(soak.path, soak.aois[row["aid"]])
        assert ref is not None
        data, valid = rasterduck.to_numpy(row["px"], masked=False)
        np.testing.assert_array_equal(data, ref[0])
        np.testing.assert_array_equal(valid, ref[1])


def test_soak_python(soak: Soak) -> None:
    srv = soak.server

    def run(faults: bool) -> tuple[dict[tuple[str, int], Any], DefaultBackend, float]:
        backend = _backend(faults=faults)
        try:
            t0 = time.perf_counter()
            out = soak.collection.read(soak.aois, ["b1"], backend=backend)
            return by_pair(out), backend, time.perf_counter() - t0
        finally:
            run_sync(backend.close())

    _fresh(srv)
    clean, _, clean_s = run(False)
    assert len(clean) == SCENES * AOIS
    _fresh(srv)
    faults = _inject(srv)
    faulty, backend, faulty_s = run(True)
    srv.clear_faults()
    same_pixels(faulty, clean)
    fired = sum(f.fired for f in faults)
    assert 0.035 < fired / srv.requests < 0.065
    _check_retries(backend, fired)
    _report("python", len(faulty), srv, faults, backend, faulty_s, clean_s)
    for k, (key, r) in enumerate(sorted(clean.items())):
        if k % 101 == 0:
            ref = rio_read(soak.path, soak.aois[key[1]])
            assert ref is not None
            np.testing.assert_array_equal(r.data, ref[0])
