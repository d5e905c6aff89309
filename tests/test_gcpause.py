"""The garbage-collector pause: nesting across threads, the application's own setting, long pauses, and
the read path (planning, finishing, the SQL result build) running with the collector off."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import shapely

import rasterduck
import rasterduck.core.kernel as kernel
import rasterduck.core.read as read
from rasterduck import gcpause
from rasterduck.gcpause import gc_paused, paused_depth, without_gc

from .httpserver import RangeServer


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    """Every test starts and ends with the collector on and no pause running."""
    gc.enable()
    yield
    assert paused_depth() == 0
    gc.enable()


def test_pause_nests_and_restores_after_an_error() -> None:
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled() and paused_depth() == 2
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), gc_paused():
        raise ValueError("boom")
    assert gc.isenabled() and paused_depth() == 0


def test_a_collector_the_application_switched_off_stays_off() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_decorated_function_runs_paused_and_keeps_its_result() -> None:
    @without_gc
    def probe(x: int, *, y: int = 1) -> tuple[bool, int]:
        return gc.isenabled(), x + y

    assert probe(2, y=3) == (False, 5)
    assert gc.isenabled()


@contextmanager
def _paused_in_another_thread() -> Iterator[None]:
    """A pause held by another thread for the length of the block."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gc_paused():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert entered.wait(10)
        yield
    finally:
        release.set()
        t.join(10)


def test_pauses_from_several_threads_end_with_the_last() -> None:
    with _paused_in_another_thread():
        with gc_paused():
            assert paused_depth() == 2
        assert not gc.isenabled()  # the other thread's pause still runs
    assert gc.isenabled()


class _Node:
    def __init__(self) -> None:
        self.other: Any = self  # a reference cycle: only the collector frees it


def test_a_long_pause_kept_up_by_overlapping_calls_still_collects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpause, "MAX_PAUSE_SECONDS", 0.0)
    with _paused_in_another_thread():
        with gc_paused():
            ref = weakref.ref(_Node())
            assert ref() is not None  # the cycle outlives its last reference while paused
        assert ref() is None  # collected when the inner call ended, though the other pause runs on
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_step_of_a_call_never_runs_the_long_pause_collection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpause, "MAX_PAUSE_SECONDS", 0.0)
    with _paused_in_another_thread():  # the call the step belongs to
        with gc_paused(step=True):
            ref = weakref.ref(_Node())
        assert ref() is not None  # no collection in the middle of the call
        with gc_paused():  # a call ending beside the other one collects
            pass
        assert ref() is None
    assert gc.isenabled()


def test_one_long_sql_call_is_not_stopped_for_a_collection(server: RangeServer,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The read steps (planning, allocation, masks, finishing) run in pool threads while the UDF call's
    pause holds: however long the call, none of them collects (S3 through SQL lost 34 ms to one)."""
    coll, aois = _collection_and_aois(server)
    monkeypatch.setattr(gcpause, "MAX_PAUSE_SECONDS", 0.0)
    collections: list[int] = []
    real_collect = gc.collect

    def counting_collect(*args: Any) -> int:
        collections.append(paused_depth())
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", counting_collect)
    steps: list[bool] = []
    _spy(monkeypatch, read, "_finish", steps)
    _con, rows = _sql_read(coll, aois)
    assert len(rows) == len(aois) and steps and not any(steps)
    assert collections == []
    assert gc.isenabled() and paused_depth() == 0


def _sql_read(coll: Any, aois: list[Any]) -> tuple[Any, list[Any]]:
    """The README's join over `coll` attached as a table and the AOIs as WKT rows: (connection, rows)."""
    con = rasterduck.connect()
    rasterduck.attach(con, "coll", coll)
    values = ", ".join(f"('{g.wkt}')" for g in aois)
    rows = con.execute(f"SELECT load_bands(r, a.g::VARCHAR, ['b1']) AS px FROM coll r, (VALUES {values}) a(g)"
                       ).fetchall()
    return con, rows


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, seen: list[bool]) -> None:
    """Record whether the collector is on each time module.name runs (a CPU function, not I/O)."""
    real = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def _collection_and_aois(server: RangeServer) -> tuple[Any, list[Any]]:
    coll = rasterduck.build_collection([server.url("geotiff/rio-tiler/cog.tif")])
    foot = shapely.from_wkb(coll.to_arrow()["geometry"][0].as_py())
    c = foot.centroid
    step = (foot.bounds[2] - foot.bounds[0]) / 40
    aois = [shapely.box(c.x + i * step, c.y, c.x + (i + 1) * step, c.y + step) for i in range(-5, 5)]
    return coll, aois


def test_api_read_plans_and_finishes_with_the_collector_off(server: RangeServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    coll, aois = _collection_and_aois(server)
    planned: list[bool] = []
    finished: list[bool] = []
    _spy(monkeypatch, read, "geometry_windows", planned)
    _spy(monkeypatch, read, "_finish", finished)
    results = coll.read(aois, ["b1"])
    assert len(results) == len(aois) and all(r.data.size for r in results)
    assert planned and finished and not any(planned) and not any(finished)
    assert gc.isenabled()


def test_sql_call_runs_paused_and_an_error_restores_the_collector(server: RangeServer,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    coll, aois = _collection_and_aois(server)
    built: list[bool] = []
    _spy(monkeypatch, kernel, "load_bands_array", built)
    con, rows = _sql_read(coll, aois)
    assert len(rows) == len(aois) and all(np.asarray(px["data"][0]).size for (px,) in rows)
    assert built == [False]
    assert gc.isenabled() and paused_depth() == 0
    with pytest.raises(Exception, match="band 'nope' not found"):
        con.execute(f"SELECT load_bands(r, '{aois[0].wkt}', ['nope']) FROM coll r").fetchall()
    assert gc.isenabled() and paused_depth() == 0
