"""`con.interrupt()` on a rasterduck connection cancels the HTTP requests its query has in flight.

DuckDB's own interrupt waits for a running Python UDF to return; `rasterduck.connect()` gives (with
duckdb >= 2.0) a connection whose `interrupt()` also cancels the batch (duck/interrupt.py). The server
is a real local range server whose "stall" fault keeps a response silent for 30 s and records whether
the client hung up, so "the query failed promptly" means well before those 30 s, and "the request was
closed" is what the server saw. With duckdb 1.x the class swap is impossible (pybind11): the tests
that need it are skipped there and the fallback (`rasterduck.duck.interrupt`) is checked instead.
"""

from __future__ import annotations

import shutil
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from shapely.geometry.base import BaseGeometry

import rasterduck
from rasterduck.duck.interrupt import interrupt_cancels

from .httpserver import RangeServer
from .test_duck_helpers import aois_for, assert_result_matches, corpus_path, rasterio_pixels

STALL = 30.0  # seconds a stalled response stays silent: the query's duration without cancellation
BOUND = 15.0  # "promptly": well before STALL (measured ~0.1 s)
NANOBIND = int(duckdb.__version__.split(".")[0]) >= 2
needs_swap = pytest.mark.skipif(not NANOBIND, reason="duckdb 1.x (pybind11) refuses __class__ assignment; "
                                "rasterduck.duck.interrupt(con) is the way there (test_duck.py)")


def _stalled_setup(make_server: Callable[..., RangeServer], root: Path) -> tuple[RangeServer, str, BaseGeometry]:
    """A server over a copy of cog.tif and a collection built before the server starts stalling."""
    tif = Path(shutil.copyfile(corpus_path("rio-tiler/cog.tif"), root / "cog.tif"))
    srv = make_server(root)
    return srv, srv.url(tif.name), aois_for(tif)[0]


def _run_in_thread(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["rows"] = con.execute(sql).fetchall()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _wait_in_flight(srv: RangeServer, t: threading.Thread) -> int:
    """Wait until a tile request is on the wire (the query's UDF is inside its batch)."""
    while srv.in_flight == 0 and t.is_alive():
        t.join(0.02)
    assert t.is_alive(), "the query ended before any request was in flight"
    return srv.in_flight


def _assert_hung_up(srv: RangeServer) -> None:
    """Every stalled request ended because the client closed it (nothing still open)."""
    assert srv.wait_idle(10)
    stalled = [r for r in srv.log if r.fault == "stall"]
    assert stalled and all(r.outcome == "aborted" for r in stalled), [(r.path, r.outcome) for r in stalled]


@needs_swap
@pytest.mark.parametrize("via", ["connection", "cursor"])
def test_con_interrupt_cancels_reads_in_flight(make_server: Callable[..., RangeServer], tmp_path: Path,
                                               via: str) -> None:
    srv, url, aoi = _stalled_setup(make_server, tmp_path)
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", rasterduck.build_collection([url]))
    target = con if via == "connection" else con.cursor()
    assert isinstance(target, duckdb.DuckDBPyConnection) and interrupt_cancels(target)
    sql = f"SELECT load_bands(r, '{aoi.wkt}', ['b1']) FROM coll r"
    srv.add_fault("stall", stall=STALL)
    t, box = _run_in_thread(target, sql)
    _wait_in_flight(srv, t)
    target.interrupt()  # DuckDB's own method name: no rasterduck call
    t.join(BOUND)
    assert not t.is_alive(), f"the query still runs {BOUND} s after interrupt()"
    err = box.get("error")
    assert isinstance(err, duckdb.Error) and "nterrupt" in str(err), err
    _assert_hung_up(srv)
    # the connection works afterwards, and its pixels are rasterio's
    srv.clear_faults()
    [(px,)] = target.execute(sql).fetchall()
    assert_result_matches(px, rasterio_pixels(tmp_path / "cog.tif", aoi), "uint16")


@needs_swap
def test_interrupt_leaves_other_databases_alone(make_server: Callable[..., RangeServer], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    srv_a, url_a, aoi = _stalled_setup(make_server, tmp_path / "a")
    srv_b, url_b, _ = _stalled_setup(make_server, tmp_path / "b")
    con_a, con_b = rasterduck.connect(), rasterduck.connect()
    rasterduck.attach(con_a, "coll", rasterduck.build_collection([url_a]))
    rasterduck.attach(con_b, "coll", rasterduck.build_collection([url_b]))
    sql = f"SELECT load_bands(r, '{aoi.wkt}', ['b1']) FROM coll r"
    srv_a.add_fault("stall", stall=STALL)
    srv_b.add_fault("stall", stall=STALL)
    ta, box_a = _run_in_thread(con_a, sql)
    tb, box_b = _run_in_thread(con_b, sql)
    _wait_in_flight(srv_a, ta)
    _wait_in_flight(srv_b, tb)
    con_a.interrupt()
    ta.join(BOUND)
    assert not ta.is_alive() and "nterrupt" in str(box_a.get("error"))
    _assert_hung_up(srv_a)
    assert tb.is_alive() and srv_b.in_flight > 0  # B's 30 s stall is untouched by A's interrupt
    assert all(r.outcome != "aborted" for r in srv_b.log)
    con_b.interrupt()
    tb.join(BOUND)
    assert not tb.is_alive() and "nterrupt" in str(box_b.get("error"))
    _assert_hung_up(srv_b)


def test_connection_stays_a_duckdb_connection(tmp_path: Path) -> None:
    con = rasterduck.connect()
    assert isinstance(con, duckdb.DuckDBPyConnection)
    assert interrupt_cancels(con) is NANOBIND  # duckdb 1.x: a plain connection (documented fallback)
    assert type(con).__module__ == duckdb.DuckDBPyConnection.__module__  # polars.read_database dispatches on it
    assert rasterduck.duck.known_state(con) is rasterduck.duck.state_of(con)
    assert con.execute("SELECT 41 + 1").fetchall() == [(42,)]
    assert con.sql("SELECT 7 AS x").fetchall() == [(7,)]
    assert duckdb.sql("SELECT 8", connection=con).fetchall() == [(8,)]
    assert con.from_arrow(pa.table({"a": [1, 2]})).aggregate("sum(a)").fetchall() == [(3,)]
    assert weakref.ref(con)() is con
    con.interrupt()  # nothing running: harmless, and the next query is not affected
    assert con.execute("SELECT rasterduck_state_id() > 0").fetchall() == [(True,)]
    cur = con.cursor()
    assert isinstance(cur, duckdb.DuckDBPyConnection) and interrupt_cancels(cur) is NANOBIND
    assert rasterduck.duck.state_of(cur) is rasterduck.duck.known_state(con)
    plain = duckdb.connect()
    assert type(plain) is duckdb.DuckDBPyConnection and not interrupt_cancels(plain)  # only ours change
    with rasterduck.connect(tmp_path / "x.duckdb") as filecon:
        filecon.execute("CREATE TABLE t AS SELECT 1 AS i").fetchall()
    with pytest.raises(duckdb.ConnectionException):
        filecon.interrupt()  # closed: DuckDB's own error, no rasterduck side effect
