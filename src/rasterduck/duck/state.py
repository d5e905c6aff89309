"""What the UDFs of one registration share: access policy and backend, pixel budget, metadata caches,
attached collections (they decide `load_bands`' pixel type) and the cancel counter.

A registration belongs to one DuckDB database: its UDFs live in the database catalog, so every
connection and cursor of that database (and the Quack server's per-query connections) call the same
functions and see the same state. `state_of(con)` finds it from any of those connections.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from ..core.read import DEFAULT_PIXEL_BUDGET
from ..errors import RasterduckError
from ..io.loop import register_closer, run_sync
from ..io.policy import AccessPolicy
from .interrupt import PROCESS, CallToken, Canceller
from .records import MetadataCache
from .types import DEFAULT_PIXEL_DTYPE, promote

T = TypeVar("T")
LocalAccess = bool | str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None
STATE_FUNCTION = "rasterduck_state_id"

_ids = itertools.count(1)
_STATES: weakref.WeakValueDictionary[int, State] = weakref.WeakValueDictionary()


class QueryInterrupted(RasterduckError):
    """The batch was cancelled by an interrupt (Ctrl-C or `rasterduck.duck.interrupt`)."""


@dataclass
class AttachedCollection:
    """One attached collection: its band dtypes, data source and folder."""

    name: str
    dtypes: set[str]
    data_source: str = ""
    folder: Path | None = None


@dataclass
class State:
    """Shared by every UDF of one registration; thread-safe."""

    con: duckdb.DuckDBPyConnection
    allow_local: bool | tuple[Path, ...] = False
    pixel_budget: int | None = DEFAULT_PIXEL_BUDGET
    custom_backend: Any = None
    id: int = field(default_factory=lambda: next(_ids))
    cache: MetadataCache = field(default_factory=MetadataCache)
    canceller: Canceller = field(default_factory=Canceller)
    collections: dict[str, AttachedCollection] = field(default_factory=dict)
    pixel_dtype: str = DEFAULT_PIXEL_DTYPE
    fixed_dtype: bool = False  # register(dtype=...) pins T; attach then leaves it alone
    headers: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    moved: OrderedDict[tuple[bytes, str, str], Any] = field(default_factory=OrderedDict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _backend: Any = None

    def __post_init__(self) -> None:
        _STATES[self.id] = self

    # ---- access policy and backend -------------------------------------------------------------
    @property
    def policy(self) -> AccessPolicy:
        """The access policy reads go through (local paths denied unless allowed)."""
        if self.allow_local is True:
            return AccessPolicy(allow_local=True)
        if self.allow_local:
            return AccessPolicy(allow_local=[str(p) for p in self.allow_local])
        return AccessPolicy()

    @property
    def backend(self) -> Any:
        """The range backend of this registration (created on first use, replaced when the policy grows)."""
        if self.custom_backend is not None:
            return self.custom_backend
        with self.lock:
            if self._backend is None:
                from ..io.backend import DefaultBackend

                self._backend = DefaultBackend(self.policy)
                register_closer(self._backend.close)
            return self._backend

    def allow(self, access: LocalAccess) -> None:
        """Widen local access: True allows every path, a folder (or several) allows those."""
        if access is None or access is False:
            return
        with self.lock:
            if self.allow_local is True:
                return
            if access is True:
                self.allow_local = True
            else:
                roots = [access] if isinstance(access, str | os.PathLike) else list(access)
                have = tuple(self.allow_local) if self.allow_local else ()
                new = tuple(dict.fromkeys(have + tuple(Path(r).expanduser().resolve() for r in roots)))
                if new == have:
                    return
                self.allow_local = new
            self._backend = None  # rebuilt with the new policy; the old one closes at exit

    # ---- running batches -----------------------------------------------------------------------
    def token(self) -> CallToken:
        """A cancel token for one UDF call (Ctrl-C or interrupt(con) sets it)."""
        return CallToken((PROCESS, self.canceller))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a batch on the background loop, cancelled by interrupts."""
        try:
            return run_sync(coro, cancel=self.token())
        except concurrent.futures.CancelledError:
            raise QueryInterrupted("interrupted: the reads in flight were cancelled") from None

    # ---- attached collections ------------------------------------------------------------------
    def data_sources(self) -> list[str]:
        """Data sources (band alias tables) of the attached collections."""
        return [c.data_source for c in self.collections.values() if c.data_source]

    def wanted_dtype(self) -> str:
        """`load_bands`' pixel dtype under the promotion rule (see types.py)."""
        if self.fixed_dtype:
            return self.pixel_dtype
        dtypes: set[str] = set()
        for c in self.collections.values():
            dtypes |= c.dtypes
        return promote(dtypes)

    # ---- AOIs moved into raster CRSs ------------------------------------------------------------
    def geometry_in(self, geom: Any, src: str, dst: str) -> Any:
        """`geom` moved from `src` to `dst`, cached by (WKB, src, dst) across calls (LRU)."""
        from ..core.geometry import transform_geometry

        if src == dst:
            return geom
        key = (geom.wkb, src, dst)
        with self.lock:
            hit = self.moved.get(key)
            if hit is not None:
                self.moved.move_to_end(key)
                return hit
        moved = transform_geometry(geom, src, dst)
        with self.lock:
            self.moved[key] = moved
            while len(self.moved) > 4096:
                self.moved.popitem(last=False)
        return moved

    # ---- header cache (read_cog_metadata) ------------------------------------------------------
    def cached_header(self, url: str) -> Any:
        """A parsed header from the cache, or None."""
        with self.lock:
            h = self.headers.get(url)
            if h is not None:
                self.headers.move_to_end(url)
            return h

    def cache_header(self, url: str, header: Any, size: int = 1024) -> None:
        """Remember a parsed header (LRU of `size`)."""
        with self.lock:
            self.headers[url] = header
            while len(self.headers) > size:
                self.headers.popitem(last=False)


def get_state(state_id: int) -> State | None:
    """The live state with this id."""
    return _STATES.get(state_id)


def state_of(con: duckdb.DuckDBPyConnection) -> State | None:
    """The registration of `con`'s database (found through a catalog function), or None."""
    try:
        rows = con.execute(f"SELECT {STATE_FUNCTION}()").fetchall()
    except duckdb.Error:
        return None
    return get_state(int(rows[0][0])) if rows else None
