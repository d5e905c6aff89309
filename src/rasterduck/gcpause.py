"""Holding off Python's cyclic garbage collector while a batch builds its plan and its results.

A batch creates tens of thousands of small objects (requests, jobs, tile uses, results) that all live
until it ends, so every collection the allocations trigger finds nothing to free: streaming 100k
(record, AOI) rows through SQL spent ~1 s of 10.5 in collections that freed 6 objects. Reference
counting still frees everything else at once. The collector is process-wide, so pauses from several
threads nest: it resumes when the last one ends, and a pause kept up by overlapping calls collects
once in a while so cycles cannot pile up. A collector the application switched off before a pause stays off.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

# overlapping pauses (several UDF threads of one long query) collect this often all the same
MAX_PAUSE_SECONDS = 1.0

_lock = threading.Lock()
_depth = 0
_ours = False  # the collector was enabled when the outermost pause began: we switched it off
_since = 0.0  # when it was switched off (or last collected during a long pause)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off (nests across threads; see module doc)."""
    global _depth, _ours, _since
    with _lock:
        if _depth == 0:
            _ours = gc.isenabled()
            if _ours:
                gc.disable()
                _since = time.monotonic()
        _depth += 1
    try:
        yield
    finally:
        collect = False
        with _lock:
            _depth -= 1
            if _ours:
                if _depth == 0:
                    gc.enable()
                    _ours = False
                elif time.monotonic() - _since > MAX_PAUSE_SECONDS:
                    _since = time.monotonic()
                    collect = True
        if collect:
            gc.collect()


def without_gc(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn` run inside `gc_paused()`."""

    @wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with gc_paused():
            return fn(*args, **kwargs)

    return run


def paused_depth() -> int:
    """How many pauses are running (for tests)."""
    return _depth
