"""The background loop: run_sync from many threads and from inside a running loop, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import _paths
import pytest
from httpserver import RangeServer

import rasterduck.io
from rasterduck.errors import AccessDeniedError
from rasterduck.io import DefaultBackend, HttpOptions, get_default_backend, get_loop, run_sync
from rasterduck.io.loop import in_loop_thread

REL = "geotiff/rasterio/RGB.byte.tif"
SLOW = HttpOptions(first_byte_timeout=60, read_timeout=60, max_attempts=1)


@pytest.fixture
def backend() -> Iterator[DefaultBackend]:
    b = DefaultBackend(http=HttpOptions(backoff_base=0.005))
    yield b
    run_sync(b.close())


def test_result_and_exception_pass_through() -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    async def boom() -> None:
        raise KeyError("x")

    assert run_sync(add(2, 3)) == 5
    with pytest.raises(KeyError):
        run_sync(boom())


def test_one_loop_for_every_thread(server: RangeServer, backend: DefaultBackend) -> None:
    data = (_paths.testdata_dir() / REL).read_bytes()
    loops: set[int] = set()
    errors: list[BaseException] = []

    async def where() -> int:
        assert in_loop_thread()
        return id(asyncio.get_running_loop())

    def worker(k: int) -> None:
        try:
            for j in range(10):
                start = k * 1000 + j * 37
                got = run_sync(backend.read_ranges(server.vurl(f"t{k}", REL), [(start, 100)]), timeout=30)
                assert got == [data[start:start + 100]]
                loops.add(run_sync(where()))
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert loops == {id(get_loop())}
    assert server.requests == 120


def test_run_sync_inside_a_running_loop(server: RangeServer, backend: DefaultBackend) -> None:
    data = (_paths.testdata_dir() / REL).read_bytes()

    async def notebook_cell() -> list[bytes]:
        # a sync API called from code that runs on another loop (e.g. Jupyter's)
        return run_sync(backend.read_ranges(server.url(REL), [(5, 10)]), timeout=30)

    assert asyncio.run(notebook_cell()) == [data[5:15]]


def test_run_sync_on_the_loop_thread_is_refused() -> None:
    async def nested() -> None:
        async def inner() -> int:
            return 1

        run_sync(inner())

    with pytest.raises(RuntimeError, match="loop thread"):
        run_sync(nested())


def _stalled(server: RangeServer, backend: DefaultBackend, seen: list[str]) -> asyncio.Future[list[bytes]] | object:
    server.add_fault("stall", stall=30)

    async def call() -> list[bytes]:
        try:
            return await backend.read_ranges(server.url(REL), [(0, 100)])
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    return call()


def _assert_request_dropped(server: RangeServer) -> None:
    assert server.wait_idle(10)
    assert server.requests == 1
    assert server.log[0].fault == "stall" and server.log[0].outcome == "aborted"  # the client hung up


def test_timeout_cancels_the_request_in_flight(server: RangeServer) -> None:
    backend = DefaultBackend(http=SLOW)
    seen: list[str] = []
    with pytest.raises(TimeoutError):
        run_sync(_stalled(server, backend, seen), timeout=0.3)  # type: ignore[arg-type]
    assert seen == ["cancelled"]
    _assert_request_dropped(server)
    run_sync(backend.close())


def test_cancel_token(server: RangeServer) -> None:
    backend = DefaultBackend(http=SLOW)
    seen: list[str] = []
    token = threading.Event()
    timer = threading.Timer(0.3, token.set)
    timer.start()
    with pytest.raises(concurrent.futures.CancelledError):
        run_sync(_stalled(server, backend, seen), cancel=token)  # type: ignore[arg-type]
    assert seen == ["cancelled"]
    _assert_request_dropped(server)
    run_sync(backend.close())


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_keyboard_interrupt_cancels(server: RangeServer, ctrl_c_raises: None) -> None:
    backend = DefaultBackend(http=SLOW)
    seen: list[str] = []
    main = threading.main_thread().ident
    assert main is not None
    caught = threading.Event()

    def press_ctrl_c() -> None:  # once the request is on the wire: the main thread waits in run_sync
        while server.in_flight == 0 and not caught.wait(0.01):
            pass
        if not caught.is_set():
            signal.pthread_kill(main, signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sync(_stalled(server, backend, seen))  # type: ignore[arg-type]
    finally:
        caught.set()
        presser.join(5)
    assert seen == ["cancelled"]
    _assert_request_dropped(server)
    run_sync(backend.close())


def test_default_backend_is_shared_and_remote_only(tmp_path: Path) -> None:
    b = get_default_backend()
    assert b is get_default_backend()
    assert isinstance(b, DefaultBackend)
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    with pytest.raises(AccessDeniedError):
        run_sync(b.read_ranges(str(f), [(0, 1)]))


def test_clean_exit_without_pytest(tmp_path: Path) -> None:
    """A plain script (no pytest) uses the server module and the default backend, then exits cleanly."""
    tests_dir = Path(__file__).resolve().parent
    script = textwrap.dedent(f"""
        import atexit, sys
        sys.path.insert(0, {str(tests_dir)!r})
        from httpserver import RangeServer
        from rasterduck.io import get_default_backend, run_sync
        from rasterduck.io import loop as io_loop

        def after_shutdown():  # registered first, so it runs after rasterduck's own exit handler
            srv.wait_idle(5, connections=True)
            print(session.closed, the_loop.is_closed(), srv.open_connections)

        atexit.register(after_shutdown)
        srv = RangeServer({str(_paths.testdata_dir())!r}, latency=0.01).start()
        backend = get_default_backend()
        out = run_sync(backend.read_ranges(srv.url({REL!r}), [(0, 4), (1000, 4)]))
        the_loop = io_loop.get_loop()
        async def get_session():
            return backend.http.session()
        session = run_sync(get_session())
        print(out[0].hex(), srv.requests, session.closed, srv.open_connections)
        # the pooled keep-alive connection stays open: shutdown at exit must close it quietly
    """)
    src = Path(rasterduck.io.__file__).resolve().parents[2]  # the same rasterduck this test imported
    env = {"PYTHONPATH": str(src), "PYTHONWARNINGS": "default", "PYTHONDEVMODE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    head = (_paths.testdata_dir() / REL).read_bytes()[:4].hex()
    assert proc.stdout.split() == [head, "1", "False", "1", "True", "True", "0"]
    for bad in ("Unclosed", "Task was destroyed", "Exception ignored", "Traceback"):
        assert bad not in proc.stderr, proc.stderr
