"""Cancelling the reads of running UDF calls.

DuckDB's `con.interrupt()` (and Ctrl-C, which DuckDB turns into an interrupt) stops a query only
between UDF calls: a Python UDF in the middle of its batch is not told. So each UDF call takes a
`CallToken` when it starts and passes it to `run_sync` as the cancel token; the token is set once a
generation counter moves. Two counters exist:

- the process counter, moved by Ctrl-C: `install_sigint_handler()` chains a SIGINT handler in front of
  the current one (DuckDB checks Python signals while a query runs, so it fires promptly) -- every
  in-flight batch of the process is cancelled, then the previous handler runs (KeyboardInterrupt);
- one counter per registration, moved by `rasterduck.duck.interrupt(con)`, which also calls
  `con.interrupt()`, and by `con.interrupt()` itself on connections made by `rasterduck.connect()`
  (see `cancel_on_interrupt`).

A cancelled batch closes its HTTP requests and the UDF raises, so the query fails at once -- as
`duckdb.InterruptException` or as an `InvalidInputException` naming QueryInterrupted, whichever DuckDB
records first (measured: both happen).

Why `con.interrupt()` needs help (measured with duckdb 1.5.5 and 2.0.1, see notes/duckdb-facts.md):
DuckDB's interrupt only sets a flag in the connection's ClientContext; a Python UDF cannot read it
(`query_progress()` stays put, nothing else exposes it). So the call itself is intercepted: the
connection object's class is swapped for a Python subclass whose `interrupt()` first interrupts the
query, then cancels the registration's batches. The swap works where DuckDB's Python classes are
nanobind types (duckdb >= 2.0); pybind11 (duckdb 1.x) refuses `__class__` assignment ("deallocator
differs"), and there `rasterduck.duck.interrupt(con)` or Ctrl-C remain the way.
The counter belongs to the registration (the database), so interrupting one connection also cancels
the batches in flight of other queries on the same database at that moment.
"""

from __future__ import annotations

import signal
import threading
import weakref
from collections.abc import Iterable
from types import FrameType
from typing import Any

import duckdb


class Canceller:
    """A generation counter; tokens taken before `cancel()` report set."""

    def __init__(self) -> None:
        self.generation = 0
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """Cancel every token taken so far (later tokens are not affected)."""
        with self._lock:
            self.generation += 1


class CallToken:
    """Cancel token of one UDF call: set once any of its cancellers moved on."""

    def __init__(self, cancellers: Iterable[Canceller]) -> None:
        self._marks = [(c, c.generation) for c in cancellers]

    def is_set(self) -> bool:
        """Whether the call should stop."""
        return any(c.generation != g for c, g in self._marks)


PROCESS = Canceller()
_previous: Any = None
_installed = False
_install_lock = threading.Lock()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    PROCESS.cancel()
    prev = _previous
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_DFL:
        raise KeyboardInterrupt


def install_sigint_handler() -> bool:
    """Chain the cancelling SIGINT handler (main thread only; idempotent). True when it is active."""
    global _previous, _installed
    if threading.current_thread() is not threading.main_thread():
        return _installed
    with _install_lock:
        current = signal.getsignal(signal.SIGINT)
        if current is _on_sigint:
            return True
        if current == signal.SIG_IGN:
            return False
        _previous = current
        signal.signal(signal.SIGINT, _on_sigint)
        _installed = True
        return True


def sigint_handler_installed() -> bool:
    """Whether our handler is the current SIGINT handler."""
    return signal.getsignal(signal.SIGINT) is _on_sigint


# ---- con.interrupt() on rasterduck's connections --------------------------------------------------
_CANCELLERS: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, Canceller] = weakref.WeakKeyDictionary()
_Base: Any = duckdb.DuckDBPyConnection


class _CancellingConnection(_Base):  # type: ignore[misc]
    """A DuckDB connection whose `interrupt()` also cancels the rasterduck reads in flight.

    Never instantiated: `cancel_on_interrupt` swaps an existing connection's class to this one, so
    `isinstance(con, duckdb.DuckDBPyConnection)` and every method stay DuckDB's own.
    """

    __slots__ = ()

    def interrupt(self) -> None:
        """Interrupt the running query (DuckDB's flag first, so it fails as an interrupt), then cancel its reads."""
        super().interrupt()
        canceller = _CANCELLERS.get(self)
        if canceller is not None:
            canceller.cancel()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor (a new connection to the same database) whose `interrupt()` cancels reads too."""
        cur: duckdb.DuckDBPyConnection = super().cursor()
        canceller = _CANCELLERS.get(self)
        if canceller is not None:
            cancel_on_interrupt(cur, canceller)
        return cur

    duplicate = cursor


# Keep what introspection sees equal to DuckDB's class: some libraries dispatch on the type's module
# (polars.read_database reads `type(con).__module__`) or name.
_CancellingConnection.__module__ = _Base.__module__
_CancellingConnection.__name__ = _Base.__name__
_CancellingConnection.__qualname__ = _Base.__qualname__


def cancel_on_interrupt(con: duckdb.DuckDBPyConnection, canceller: Canceller) -> bool:
    """Make `con.interrupt()` also cancel `canceller`'s batches; False when this DuckDB cannot (1.x).

    `con` keeps its identity and type checks (its class becomes a subclass of DuckDB's); cursors taken
    from it afterwards get the same behaviour.
    """
    if type(con) is not _Base and not isinstance(con, _CancellingConnection):
        return False  # someone else's subclass: leave it alone
    try:
        con.__class__ = _CancellingConnection
    except TypeError:  # pybind11 (duckdb < 2): "__class__ assignment: ... deallocator differs"
        return False
    _CANCELLERS[con] = canceller
    return True


def interrupt_cancels(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `con.interrupt()` cancels the rasterduck reads in flight (see `cancel_on_interrupt`)."""
    return isinstance(con, _CancellingConnection) and con in _CANCELLERS
