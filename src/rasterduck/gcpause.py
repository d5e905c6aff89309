"""Holding off Python's cyclic garbage collector while a batch builds its plan and its results.

A batch creates tens of thousands of small objects (requests, jobs, tile uses, results) that all live
until it ends, so every collection the allocations trigger finds nothing to free: streaming 100k
(record, AOI) rows through SQL spent ~1 s of 10.5 in collections that freed 6 objects. Reference
counting still frees everything else at once. The collector is process-wide, so pauses from several
threads nest: it resumes when the last one ends, and a pause kept up by overlapping calls collects
once in a while so cycles cannot pile up. That collection belongs between calls: a step of a call
(planning, finishing, run in a pool thread while the call's own pause holds) never runs it, or a single
long call would stop in the middle for a full collection (S3 through SQL: 34 ms in its last step).
A collector the application switched off before a pause stays off.
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
def gc_paused(*, step: bool = False) -> Iterator[None]:
    """Run the block with the cyclic garbage collector off (nests across threads; see module doc).
    `step`: a part of a larger call, which never runs the periodic collection itself."""
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
                elif not step and time.monotonic() - _since > MAX_PAUSE_SECONDS:
                    _since = time.monotonic()
                    collect = True
        if collect:
            gc.collect()


def _paused(fn: Callable[P, T], step: bool) -> Callable[P, T]:
    @wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with gc_paused(step=step):
            return fn(*args, **kwargs)

    return run


def without_gc(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn` run inside `gc_paused()`: a call (a UDF batch, a public batch function)."""
    return _paused(fn, False)


def without_gc_step(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn` run inside `gc_paused(step=True)`: a step of a call (see gc_paused)."""
    return _paused(fn, True)


def paused_depth() -> int:
    """How many pauses are running (for tests)."""
    return _depth
