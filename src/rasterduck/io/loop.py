"""The one background event loop of the process, and ``run_sync`` to call async I/O from sync code.

DuckDB UDFs, notebooks and scripts are synchronous; aiohttp sessions are bound to one loop. So all I/O
runs on a single daemon thread with a long-lived loop (started on first use) and sync callers submit
coroutines to it. This works from any thread, also one whose own loop is running (Jupyter), because the
caller's loop is never used. Waiting can be cut short by a timeout, a cancel token or Ctrl-C: the
submitted task is cancelled, which closes its requests in flight. At interpreter exit the registered
closers run (HTTP sessions close) and the loop stops.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from rasterduck.io.backend import RangeBackend

T = TypeVar("T")

_POLL = 0.1  # seconds between checks of the cancel token / signals while waiting
_CANCEL_GRACE = 5.0  # how long a cancelled call waits for its task to unwind

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_closers: list[Callable[[], Awaitable[None]]] = []
_default_backend: RangeBackend | None = None
_atexit_done = False


class CancelToken(Protocol):
    """Anything with ``is_set()``, e.g. ``threading.Event``; set it to cancel a waiting ``run_sync``."""

    def is_set(self) -> bool: ...


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    loop.run_forever()


def get_loop() -> asyncio.AbstractEventLoop:
    """The background I/O loop, started (daemon thread) on first use."""
    global _loop, _thread, _atexit_done
    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive() and not _loop.is_closed():
            return _loop
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(target=_serve, args=(loop, ready), name="rasterduck-io", daemon=True)
        thread.start()
        ready.wait()
        _loop, _thread = loop, thread
        if not _atexit_done:
            atexit.register(shutdown)
            _atexit_done = True
        return loop


def in_loop_thread() -> bool:
    """Whether the caller runs on the background loop's thread (where blocking would deadlock)."""
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None, cancel: CancelToken | None = None) -> T:
    """Run ``coro`` on the background loop and wait for its result from any thread.

    Raises TimeoutError after ``timeout`` seconds and concurrent.futures.CancelledError when ``cancel``
    is set; in both cases, and on KeyboardInterrupt, the task is cancelled before this returns.
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError("run_sync() called on the rasterduck I/O loop thread; await the coroutine instead")
    loop = get_loop()
    done = threading.Event()
    box: dict[str, Any] = {}

    def start() -> None:
        task = loop.create_task(coro)
        box["task"] = task
        task.add_done_callback(lambda _t: done.set())

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:
        coro.close()
        raise
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not done.is_set():
            if cancel is not None and cancel.is_set():
                _cancel(loop, box, done)
                raise concurrent.futures.CancelledError("cancelled by the cancel token")
            wait = _POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    _cancel(loop, box, done)
                    raise TimeoutError(f"I/O did not finish within {timeout} s (cancelled)")
                wait = min(wait, left)
            done.wait(wait)
    except KeyboardInterrupt:
        _cancel(loop, box, done)
        raise
    task: asyncio.Task[T] = box["task"]
    if task.cancelled():
        raise concurrent.futures.CancelledError("the I/O task was cancelled")
    return task.result()


def _cancel(loop: asyncio.AbstractEventLoop, box: dict[str, Any], done: threading.Event) -> None:
    """Cancel the submitted task on its loop and give it a moment to close what it holds."""

    def cancel_task() -> None:
        task = box.get("task")
        if task is not None:
            task.cancel()

    try:
        loop.call_soon_threadsafe(cancel_task)
    except RuntimeError:  # loop already closed
        return
    done.wait(_CANCEL_GRACE)


def register_closer(closer: Callable[[], Awaitable[None]]) -> None:
    """Run ``await closer()`` on the background loop at shutdown (e.g. a backend's ``close``)."""
    with _lock:
        _closers.append(closer)


def get_default_backend() -> RangeBackend:
    """The process-wide DefaultBackend (remote URLs only; no local files), created on first use."""
    global _default_backend
    with _lock:
        backend = _default_backend
    if backend is not None:
        return backend
    from rasterduck.io.backend import DefaultBackend

    with _lock:
        if _default_backend is None:
            created = DefaultBackend()
            _default_backend = created
            _closers.append(created.close)
        return _default_backend


def set_default_backend(backend: RangeBackend) -> None:
    """Replace the process-wide backend (e.g. with an obstore or signing backend)."""
    global _default_backend
    with _lock:
        _default_backend = backend
        close = getattr(backend, "close", None)
        if close is not None:
            _closers.append(close)


async def _close_all() -> None:
    with _lock:
        closers = list(dict.fromkeys(_closers))  # closers are idempotent; run each once
    for closer in closers:
        try:
            await closer()
        except Exception:  # closing is best effort at exit
            pass
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current]
    for t in others:
        t.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def shutdown(timeout: float = 5.0) -> None:
    """Close registered resources and stop the loop (runs at interpreter exit; safe to call twice)."""
    global _loop, _thread
    with _lock:
        loop, thread = _loop, _thread
        _loop = _thread = None
    if loop is None or loop.is_closed():
        return
    if thread is not None and thread.is_alive():
        try:
            asyncio.run_coroutine_threadsafe(_close_all(), loop).result(timeout)
        except Exception:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
    if not loop.is_running():
        loop.close()


def _after_fork_in_child() -> None:
    """A forked child has no loop thread: forget the parent's loop and sessions."""
    global _loop, _thread, _default_backend, _lock
    _lock = threading.Lock()
    _loop = _thread = None
    _default_backend = None
    _closers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
