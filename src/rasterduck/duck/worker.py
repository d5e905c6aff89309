"""Run UDF bodies on Python-created threads.

DuckDB calls Python UDFs on its own C++ threads ("Dummy-N" in `threading`), whose Python thread state
is created and destroyed around every call. pyproj keeps a PROJ context per thread and crashes the
process (segmentation fault, pyproj 3.7.2 / PROJ 9.5.1, DuckDB 1.5.5 and 2.0.1) when a CRS or
Transformer is used on such a thread. So every UDF body runs on a small pool of ordinary daemon threads
(daemon: a call still waiting for I/O never blocks interpreter exit); the DuckDB thread only waits.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_LOCK = threading.Lock()
_QUEUE: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
_THREADS: list[threading.Thread] = []
_IDLE = 0  # started threads not running a task
_PENDING = 0  # queued tasks no thread has taken yet
_MAX = max(8, 2 * (os.cpu_count() or 2))


def _work() -> None:
    global _IDLE, _PENDING
    while True:
        fut, fn, args = _QUEUE.get()
        with _LOCK:
            _IDLE -= 1
            _PENDING -= 1
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)
        del fut, fn, args
        with _LOCK:
            _IDLE += 1


def _submit(fn: Callable[..., T], args: tuple[Any, ...]) -> concurrent.futures.Future[T]:
    """Queue `fn(*args)` for the daemon workers (started on demand, up to _MAX)."""
    global _IDLE, _PENDING
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()
    with _LOCK:
        _PENDING += 1
        if _PENDING > _IDLE and len(_THREADS) < _MAX:
            t = threading.Thread(target=_work, name=f"rasterduck-udf-{len(_THREADS)}", daemon=True)
            _THREADS.append(t)
            _IDLE += 1
            t.start()
    _QUEUE.put((fut, fn, args))
    return fut


def _foreign_thread() -> bool:
    """Whether the caller is a thread Python did not create (DuckDB's worker threads)."""
    return isinstance(threading.current_thread(), threading._DummyThread)


def run_in_worker(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a Python thread: inline when already on one, else on the pool (waiting for it)."""
    if not _foreign_thread():
        return fn(*args)
    fut = _submit(fn, args)
    while True:
        try:
            return fut.result(timeout=0.1)
        except concurrent.futures.TimeoutError:
            continue


def on_python_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a UDF so its body runs on a Python-created thread."""

    def udf(*args: Any) -> T:
        return run_in_worker(fn, *args)

    udf.__name__ = getattr(fn, "__name__", "udf")
    udf.__doc__ = fn.__doc__
    return udf


def _after_fork_in_child() -> None:
    global _LOCK, _QUEUE, _IDLE, _PENDING
    _LOCK = threading.Lock()
    _QUEUE = queue.SimpleQueue()
    _THREADS.clear()
    _IDLE = _PENDING = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
