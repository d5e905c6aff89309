"""The byte-range backend protocol and the default backend that routes URLs to HTTP or local files.

A backend is any object with ``async read_ranges(url, ranges) -> list[bytes]``: ``ranges`` is a sequence
of ``(start, length)`` pairs of one file and the answer holds exactly ``length`` bytes for each, in input
order (any bytes-like object: the built-in backends answer parts of a coalesced request as memoryviews). ``async close()`` is optional. Callers pass every range they need from one URL in a single call,
so a backend can coalesce them. Plug in your own transport (obstore, fsspec, URL signing) like this::

    class SignedBackend:
        def __init__(self, inner: RangeBackend, sign: Callable[[str], str]) -> None:
            self.inner, self.sign = inner, sign

        async def read_ranges(self, url: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
            return await self.inner.read_ranges(self.sign(url), ranges)

``DefaultBackend`` sends http(s) to ``HttpBackend``, rewrites ``s3://bucket/key`` to the bucket's public
HTTPS endpoint, and reads plain paths and ``file://`` URLs with ``LocalBackend`` when the access policy
allows it. All fetches of one backend share one concurrency limit (``max_concurrent``).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import quote, urlsplit

from rasterduck.errors import FetchError
from rasterduck.io.policy import AccessPolicy, url_scheme
from rasterduck.io.ranges import DEFAULT_MAX_GAP, DEFAULT_MAX_SIZE, MergedRange, coalesce, split

if TYPE_CHECKING:
    from rasterduck.io.http import HttpOptions

T = TypeVar("T")
DEFAULT_MAX_CONCURRENT = 50


@runtime_checkable
class RangeBackend(Protocol):
    """Anything that can fetch byte ranges of one URL; see the module docstring."""

    async def read_ranges(self, url: str, ranges: Sequence[tuple[int, int]]) -> Sequence[bytes | memoryview]:
        """Return exactly ``length`` bytes for each ``(start, length)``, in input order."""
        ...


@dataclass
class Counters:
    """Named counters that threads and the event loop add to (the fields of a subclass)."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        """Add to counters by name (thread-safe)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)


@dataclass
class FetchStats(Counters):
    """Counters of one backend: calls, input and merged ranges, requests (attempts), retries, bytes."""

    calls: int = 0
    ranges: int = 0
    merged: int = 0
    requests: int = 0
    retries: int = 0
    redirects: int = 0
    bytes: int = 0

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_"):
                    setattr(self, f.name, 0)


class ConcurrencyLimiter:
    """An ``async with`` limit shared by all fetches of a backend, with one semaphore per event loop."""

    def __init__(self, limit: int = DEFAULT_MAX_CONCURRENT) -> None:
        if limit < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {limit}")
        self.limit = limit
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._sems.get(loop)
            if sem is None:
                sem = self._sems[loop] = asyncio.Semaphore(self.limit)
            return sem

    async def __aenter__(self) -> None:
        await self._sem().acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._sem().release()


async def gather_fail_fast(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Run awaitables concurrently; on the first failure cancel the rest and raise it (no ExceptionGroup)."""
    if len(aws) == 1:
        return [await aws[0]]
    tasks = [asyncio.ensure_future(a) for a in aws]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    errors = [e for t in tasks if not t.cancelled() and (e := t.exception()) is not None]
    if errors:
        raise errors[0]
    return [t.result() for t in tasks]


class CoalescingBackend:
    """Base of the built-in backends: validate, coalesce, fetch merged ranges under the limit, split."""

    def __init__(
        self,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_gap: int = DEFAULT_MAX_GAP,
        max_size: int = DEFAULT_MAX_SIZE,
        limiter: ConcurrencyLimiter | None = None,
        stats: FetchStats | None = None,
    ) -> None:
        self.max_gap = max_gap
        self.max_size = max_size
        self.limiter = limiter if limiter is not None else ConcurrencyLimiter(max_concurrent)
        self.stats = stats if stats is not None else FetchStats()

    async def read_ranges(self, url: str, ranges: Sequence[tuple[int, int]]) -> list[bytes | memoryview]:
        """Fetch every ``(start, length)`` of ``url``; nearby ranges share one request."""
        target = self._prepare(url)
        norm = [(int(s), int(n)) for s, n in ranges]
        merged = coalesce(norm, self.max_gap, self.max_size)
        self.stats.add(calls=1, ranges=len(norm), merged=len(merged))
        if not merged:
            return [b""] * len(norm)
        buffers = await self._read_merged(url, target, merged)
        return split(merged, buffers, norm)

    def _prepare(self, url: str) -> str:
        """Check ``url`` (access policy) and return what to fetch; raise before any I/O when refused."""
        return url

    async def _read_merged(self, url: str, target: str, merged: list[MergedRange]) -> list[bytes]:
        """Fetch each merged range concurrently, each under the shared limit."""

        async def one(m: MergedRange) -> bytes:
            async with self.limiter:
                return await self.fetch(target, m.start, m.length)

        return await gather_fail_fast([one(m) for m in merged])

    async def fetch(self, url: str, start: int, length: int) -> bytes:
        """Fetch one contiguous range (exactly ``length`` bytes); subclasses implement it."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release pooled resources; the backend stays usable (resources are recreated on demand)."""


def s3_to_https(url: str, endpoint: str | None = None) -> str:
    """Rewrite ``s3://bucket/key`` to the bucket's HTTPS URL (path style for dotted buckets or ``endpoint``)."""
    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise FetchError("s3 URL needs a bucket and a key", url=url)
    key = quote(key, safe="/-_.~")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{key}"
    if "." in bucket:  # virtual-host TLS certificates do not cover dotted bucket names
        return f"https://s3.amazonaws.com/{bucket}/{key}"
    return f"https://{bucket}.s3.amazonaws.com/{key}"


class DefaultBackend:
    """Route by URL: http(s) and s3 to HttpBackend, local paths and file:// to LocalBackend (policy permitting)."""

    def __init__(
        self,
        policy: AccessPolicy | None = None,
        http: HttpOptions | None = None,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_gap: int = DEFAULT_MAX_GAP,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        from rasterduck.io.http import HttpBackend, HttpOptions
        from rasterduck.io.local import LocalBackend

        self.policy = policy if policy is not None else AccessPolicy()
        self.options = http if http is not None else HttpOptions()
        self.stats = FetchStats()
        self.limiter = ConcurrencyLimiter(max_concurrent)
        common: dict[str, Any] = dict(max_gap=max_gap, max_size=max_size, limiter=self.limiter, stats=self.stats)
        self.http = HttpBackend(self.options, policy=self.policy, **common)
        self.local = LocalBackend(self.policy, **common)

    def __repr__(self) -> str:
        return f"DefaultBackend(policy={self.policy!r}, max_concurrent={self.limiter.limit})"

    def route(self, url: str) -> tuple[CoalescingBackend, str]:
        """The built-in backend and the URL it should fetch for ``url``; raises AccessDeniedError/FetchError."""
        scheme = url_scheme(url)
        if scheme in ("", "file"):
            return self.local, url
        self.policy.check_remote(url)
        if scheme in ("http", "https"):
            return self.http, url
        if scheme == "s3":
            return self.http, s3_to_https(url, self.options.s3_endpoint)
        raise FetchError(f"no built-in reader for scheme {scheme!r}; pass a backend (e.g. obstore or fsspec)",
                         url=url)

    async def read_ranges(self, url: str, ranges: Sequence[tuple[int, int]]) -> Sequence[bytes | memoryview]:
        """Fetch ranges of ``url`` through the backend its scheme selects."""
        backend, target = self.route(url)
        return await backend.read_ranges(target, ranges)

    async def read_upto(self, url: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``start`` (short only at end of file): speculative header reads."""
        backend, target = self.route(url)
        return await backend.read_upto(target, start, length)  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Close the HTTP session of the running loop and the local reader's threads."""
        await self.http.close()
        await self.local.close()
