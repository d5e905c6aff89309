"""Cancelling the reads of running UDF calls.

DuckDB's `con.interrupt()` (and Ctrl-C, which DuckDB turns into an interrupt) stops a query only
between UDF calls: a Python UDF in the middle of its batch is not told. So each UDF call takes a
`CallToken` when it starts and passes it to `run_sync` as the cancel token; the token is set once a
generation counter moves. Two counters exist:

- the process counter, moved by Ctrl-C: `install_sigint_handler()` chains a SIGINT handler in front of
  the current one (DuckDB checks Python signals while a query runs, so it fires promptly) -- every
  in-flight batch of the process is cancelled, then the previous handler runs (KeyboardInterrupt);
- one counter per registration, moved by `rasterduck.duck.interrupt(con)`, which also calls
  `con.interrupt()`: use it instead of `con.interrupt()` from another thread.

A cancelled batch closes its HTTP requests and the UDF raises, so the query fails at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any


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
