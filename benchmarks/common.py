"""Helpers every reader process shares (standard library + NumPy only, Python 3.11 and 3.12).

A reader is started as ``python reader_x.py SPEC.json OUT.json START_TS``: it imports what it needs,
notes the time, does the work, notes the time again, then hashes every (AOI, scene, band) array it
produced and writes OUT.json with its timings, peak RSS and hashes. START_TS is the harness's
``time.time()`` just before the process was spawned, so wall time includes interpreter start-up and imports.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np


def key(aoi_id: str, scene_id: str, band: str) -> str:
    """The identity of one compared array."""
    return f"{aoi_id}|{scene_id}|{band}"


def pixel_hash(arr: Any) -> str:
    """Hash of a 2-D array's shape and little-endian bytes (identical pixels <=> identical hash)."""
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {a.shape}")
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    h = hashlib.sha1(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()[:20]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads) so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Run:
    """Timing and output of one reader process: `imported()`, `done()`, then `finish(hashes)`."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self.spec_path, self.out_path, self.start_ts = sys.argv[1], sys.argv[2], float(sys.argv[3])
        self.spec: dict[str, Any] = json.loads(open(self.spec_path).read())
        self.t_imported = self.t_done = self.t_session = 0.0
        self.rss_done = 0.0
        self.cpu_done = self.cpu_imported = 0.0
        self.extra: dict[str, Any] = {}

    def imported(self) -> None:
        """Mark the end of imports: work time (and work CPU) starts here."""
        self.t_imported = time.time()
        self.cpu_imported = _cpu_seconds()

    def session_opened(self) -> None:
        """Mark the end of a once-per-process session setup inside the work (the SQL reader's
        `rasterduck.connect()`: a DuckDB database opened, functions registered); reported apart."""
        self.t_session = time.time()

    def done(self) -> None:
        """Mark the end of the work (all pixels in memory): wall and work time stop here."""
        self.t_done = time.time()
        self.rss_done = peak_rss_mb()
        self.cpu_done = _cpu_seconds()

    def write(self, payload: dict[str, Any]) -> None:
        """Write OUT.json."""
        with open(self.out_path, "w") as f:
            json.dump(payload, f)

    def finish(self, hashes: dict[str, str]) -> None:
        """Write the timings, peak RSS and hashes."""
        self.write({
            "reader": self.reader, "import_s": self.t_imported - self.start_ts,
            "work_s": self.t_done - self.t_imported, "wall_s": self.t_done - self.start_ts,
            "session_s": self.t_session - self.t_imported if self.t_session else 0.0,
            "rss_peak_mb": self.rss_done, "cpu_s": self.cpu_done,
            "work_cpu_s": self.cpu_done - self.cpu_imported if self.cpu_imported else None, "hashes": hashes, "extra": self.extra,
        })

    def skip(self, reason: str) -> None:
        """Report that this reader cannot run the scenario (and why)."""
        self.write({"reader": self.reader, "skipped": reason})


def main_guard(run: Run, body: Callable[[], dict[str, str]]) -> None:
    """Run the body; write its hashes, or the error with traceback, so the harness can report it."""
    try:
        hashes = body()
    except SkipReader as s:
        run.skip(str(s))
        return
    except BaseException as exc:  # report everything, including KeyboardInterrupt
        run.write({"reader": run.reader, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        raise SystemExit(1) from exc
    run.finish(hashes)


class SkipReader(Exception):
    """Raised by a reader that cannot run this scenario (missing surface or dependency)."""
