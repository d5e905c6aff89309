"""Shared fixtures: a real local HTTP range server over the test corpus, and servers over temp folders."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _paths import testdata_dir
from httpserver import RangeServer


@pytest.fixture(scope="session")
def http_server() -> Iterator[RangeServer]:
    """One server for the session over testdata_dir(); ``http_server.url("geotiff/gdal/byte.tif")``."""
    with RangeServer(testdata_dir()) as srv:
        yield srv


@pytest.fixture
def server(http_server: RangeServer) -> Iterator[RangeServer]:
    """The session server with counters, faults, latency and bandwidth reset before and after the test."""
    http_server.wait_idle()
    http_server.reset()
    yield http_server
    http_server.reset()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., RangeServer]]:
    """A factory of servers over a folder (default: the test's tmp_path); all are stopped after the test."""
    made: list[RangeServer] = []

    def make(root: str | Path | None = None, **options: Any) -> RangeServer:
        srv = RangeServer(root if root is not None else tmp_path, **options).start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT handled as in an interactive session, for a test that presses Ctrl-C (in this process, or in a
    child it starts, which inherits an ignored SIGINT). A process started in the background by a
    non-interactive shell (`nohup ... &`) begins with SIGINT ignored, and Python keeps it ignored."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
