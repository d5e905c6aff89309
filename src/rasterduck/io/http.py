"""HTTP range reads with aiohttp: pooled keep-alive, timeouts everywhere, retries, strict answer checks.

One ``ClientSession`` per event loop, created lazily on that loop. Every await is bounded: connect,
first byte (status line and headers), every socket read, and the whole attempt. Connection errors,
timeouts, truncated bodies, wrong Content-Range, 408, 429 and 5xx are retried with exponential backoff
and full jitter (Retry-After honoured up to a cap); other 4xx fail at once with ``FetchError``. A 200 to a
Range request is cut short: only the bytes up to the range end are read (when that is at most
``ignored_range_max``) and the connection is dropped. Redirects are followed by hand, http(s) only.
When the access policy refuses some addresses (private, link-local, ...), host names go through a
resolver that drops refused addresses, so a connection only ever goes to an address that passed the
check (no check-then-resolve-again race); a name with no allowed address fails at once, not retried.
Requests start one per loop iteration (``LaunchPacer``), so a burst puts its first requests on the wire
while the rest are still being built.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from rasterduck.errors import AccessDeniedError, FetchError
from rasterduck.io.backend import CoalescingBackend
from rasterduck.io.policy import AccessPolicy, numeric_address, url_scheme

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PERMANENT_5XX = frozenset({501, 505})


@dataclass(frozen=True)
class HttpOptions:
    """Tuning of the HTTP client; the defaults suit public object stores (S3, GCS, Azure, CDNs)."""

    connect_timeout: float = 10.0
    first_byte_timeout: float = 30.0  # from sending the request to the end of the headers
    read_timeout: float = 30.0  # for every socket read (headers too, so it also bounds the first byte)
    attempt_timeout: float | None = 300.0  # whole attempt, a cap against trickling servers
    max_attempts: int = 5
    backoff_base: float = 0.2
    backoff_max: float = 10.0
    retry_after_max: float = 30.0
    max_redirects: int = 5
    ignored_range_max: int = 4 * 1024 * 1024
    pool_limit: int | None = None  # total connections; None: max(100, the backend's max_concurrent)
    limit_per_host: int | None = None  # None: the backend's max_concurrent
    keepalive_timeout: float = 30.0
    dns_cache_ttl: int = 300
    # the stream's flow-control limit: bodies are read whole (a tile, ~1 MB, or a coalesced range), so a
    # low limit only pauses and resumes the socket mid-body (S1/S2: ~5-10 % slower at 256 KiB than 4 MiB)
    read_bufsize: int = 4 * 1024 * 1024
    trust_env: bool = False  # proxies from HTTP(S)_PROXY when True
    headers: Mapping[str, str] = field(default_factory=dict)
    s3_endpoint: str | None = None  # e.g. a regional endpoint or MinIO; path-style URLs are used then
    ca_file: str | None = None  # extra trusted CA bundle (PEM); verification itself is always on
    user_agent: str = "rasterduck"
    # aiohttp TraceConfigs given to the session: hooks on request start, connection, headers sent...
    trace_configs: Sequence[aiohttp.TraceConfig] = ()


class _Retryable(Exception):
    """An attempt failed in a way worth retrying."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``bytes first-last/total`` as (first, last, total or None); None when absent or malformed."""
    if not value:
        return None
    m = _CONTENT_RANGE.match(value)
    if m is None:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date); None when absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(attempt: int, retry_after: float | None, options: HttpOptions, rng: random.Random | None = None) -> float:
    """Sleep before retry number ``attempt`` (1-based): Retry-After capped, else full-jitter exponential backoff."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), options.retry_after_max)
    ceiling = min(options.backoff_max, options.backoff_base * 2 ** (attempt - 1))
    return (rng or random).uniform(0.0, ceiling)


class PolicyResolver(AbstractResolver):
    """A resolver that keeps only the addresses the access policy allows; none left: AccessDeniedError."""

    def __init__(self, policy: AccessPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        """Resolve ``host`` with the inner resolver and drop refused addresses."""
        found = await self.inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        first_refusal: AccessDeniedError | None = None
        for entry in found:
            ip = numeric_address(str(entry["host"]))
            try:
                if ip is None:
                    raise AccessDeniedError(f"{host} resolved to {entry['host']!r}, not an address")
                self.policy.check_address(ip, host=host)
            except AccessDeniedError as exc:
                first_refusal = first_refusal or exc
                continue
            kept.append(entry)
        if not kept:
            raise first_refusal or AccessDeniedError(f"{host} resolves to no address")
        return kept

    async def close(self) -> None:
        """Close the inner resolver."""
        await self.inner.close()


def _denial(exc: BaseException) -> AccessDeniedError | None:
    """The policy refusal inside an aiohttp connection error (the resolver's AccessDeniedError), if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, AccessDeniedError):
            return seen
        inner = getattr(seen, "os_error", None)
        seen = inner if isinstance(inner, BaseException) else seen.__cause__
    return None


async def _drain_small(resp: aiohttp.ClientResponse, limit: int = 64 * 1024) -> None:
    """Read a short error or redirect body so the connection can go back to the pool; else drop it."""
    if resp.content_length is not None and resp.content_length <= limit:
        await resp.read()
        resp.release()
    else:
        resp.close()


class LaunchPacer:
    """Lets one request start per event-loop iteration.

    asyncio runs every ready task's step in each iteration, so a burst of N requests started together
    advances in lockstep: all N are built (URL, headers, socket, connect) before the first one is sent.
    Here aiohttp builds a request in ~0.3 ms, so 32 requests left together ~12 ms after the first was
    started. One start per iteration lets the selector run between starts: each request goes out a few
    iterations after its own start (S1's 32 requests: -16 ms, S2: -23 ms). The total work is unchanged,
    and a start that finds no burst waits for nothing.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.busy = False  # a request started in this iteration

    async def turn(self) -> None:
        """Return when the caller may start its request: at once in an iteration without a start yet, else
        in a later iteration, first come first served."""
        if not self.busy:
            self.busy = True
            self.loop.call_soon(self._next)
            return
        fut = self.loop.create_future()
        self.waiting.append(fut)
        await fut

    def _next(self) -> None:
        """Wake the next waiter still waiting (a cancelled one is skipped) and keep the one-per-iteration
        chain going while there are waiters."""
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(None)
                self.loop.call_soon(self._next)
                return
        self.busy = False


class HttpBackend(CoalescingBackend):
    """Range reads over HTTP(S) with aiohttp; see the module docstring."""

    def __init__(self, options: HttpOptions | None = None, *, policy: AccessPolicy | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = options if options is not None else HttpOptions()
        self.policy = policy if policy is not None else AccessPolicy()
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary())
        self._lock = threading.Lock()
        self._pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LaunchPacer] = (
            weakref.WeakKeyDictionary())

    def session(self) -> aiohttp.ClientSession:
        """The pooled session of the running loop, created on first use."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sess = self._sessions.get(loop)
            if sess is None or sess.closed:
                sess = self._sessions[loop] = self._new_session()
            return sess

    def _new_session(self) -> aiohttp.ClientSession:
        o = self.options
        concurrent = self.limiter.limit
        connector = aiohttp.TCPConnector(
            limit=o.pool_limit or max(100, concurrent), limit_per_host=o.limit_per_host or concurrent,
            ttl_dns_cache=o.dns_cache_ttl,
            use_dns_cache=True, keepalive_timeout=o.keepalive_timeout,
            ssl=ssl.create_default_context(cafile=o.ca_file) if o.ca_file else True,
            resolver=PolicyResolver(self.policy) if self.policy.checks_addresses else None)
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=o.connect_timeout,
                                        sock_read=o.read_timeout)
        headers = {"User-Agent": o.user_agent, "Accept-Encoding": "identity", **o.headers}
        return aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                     auto_decompress=False, trust_env=o.trust_env, read_bufsize=o.read_bufsize,
                                     trace_configs=list(o.trace_configs) or None)

    def _pacer(self) -> LaunchPacer:
        """The request pacer of the running loop (used on that loop's thread only)."""
        loop = asyncio.get_running_loop()
        pacer = self._pacers.get(loop)
        if pacer is None:
            with self._lock:  # loops on other threads may add theirs at the same time
                pacer = self._pacers.setdefault(loop, LaunchPacer(loop))
        return pacer

    async def close(self) -> None:
        """Close the session of the running loop; sessions of other live loops are closed on their loop."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        with self._lock:
            items = list(self._sessions.items())
            self._sessions.clear()
        for loop, sess in items:
            if sess.closed:
                continue
            if loop is current:
                await sess.close()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(sess.close(), loop)

    def _prepare(self, url: str) -> str:
        """Accept http(s) URLs allowed by the policy."""
        if url_scheme(url) not in ("http", "https"):
            raise AccessDeniedError("HttpBackend reads http(s) URLs only", url=url)
        self.policy.check_remote(url)
        return url

    async def read_upto(self, url: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``start``: shorter (or empty) only where the file ends. For speculative
        header reads, which must not cost an extra request to learn the file size."""
        target = self._prepare(url)
        self.stats.add(calls=1, ranges=1, merged=1)
        async with self.limiter:
            return await self.fetch(target, start, length, short_ok=True)

    async def fetch(self, url: str, start: int, length: int, short_ok: bool = False) -> bytes:
        """One range with retries; raises FetchError naming the URL and status when it cannot succeed."""
        o = self.options
        attempt = 0
        while True:
            attempt += 1
            self.stats.add(requests=1)
            try:
                if o.attempt_timeout is None:
                    return await self._attempt(url, start, length, short_ok)
                async with asyncio.timeout(o.attempt_timeout):
                    return await self._attempt(url, start, length, short_ok)
            except TimeoutError:
                failure = _Retryable(f"attempt exceeded {o.attempt_timeout}s")
            except _Retryable as exc:
                failure = exc
            if attempt >= o.max_attempts:
                raise FetchError(f"giving up after {attempt} attempts: {failure.reason}", status=failure.status,
                                 transient=True, url=url) from failure
            self.stats.add(retries=1)
            await asyncio.sleep(retry_delay(attempt, failure.retry_after, o))

    async def _attempt(self, url: str, start: int, length: int, short_ok: bool = False) -> bytes:
        """One attempt: follow redirects by hand, then check and read the answer."""
        o = self.options
        session = self.session()
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        current = url
        for hop in range(o.max_redirects + 1):
            await self._pacer().turn()
            try:
                async with asyncio.timeout(o.first_byte_timeout):
                    resp = await session.get(current, headers=headers, allow_redirects=False)
            except TimeoutError as exc:
                raise _Retryable(f"no response within {o.first_byte_timeout}s") from exc
            except aiohttp.ClientSSLError as exc:  # a bad certificate will not get better by retrying
                raise FetchError(f"TLS error: {exc}", url=url) from exc
            except aiohttp.ClientConnectionError as exc:
                denied = _denial(exc)
                if denied is not None:  # refused by the policy after resolving: permanent
                    where = "" if current == url else f" (redirected to {current})"
                    raise AccessDeniedError(denied.message + where, url=url) from exc
                raise _Retryable(f"connection failed: {exc!r}") from exc
            except aiohttp.InvalidURL as exc:
                raise FetchError(f"invalid URL: {exc}", url=url) from exc
            try:
                if resp.status in _REDIRECTS:
                    current = self._redirect_target(url, current, resp, hop)
                    await _drain_small(resp)
                    continue
                data = await self._read_answer(url, current, resp, start, length, short_ok)
                resp.release()
                return data
            except (aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as exc:
                resp.close()
                raise _Retryable(f"truncated body: {exc!r}") from exc
            except aiohttp.ClientConnectionError as exc:
                resp.close()
                raise _Retryable(f"connection lost while reading: {exc!r}") from exc
            except BaseException:
                resp.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _redirect_target(self, url: str, current: str, resp: aiohttp.ClientResponse, hop: int) -> str:
        """Where a redirect points, after the hop limit and the http(s)-only rule."""
        location = resp.headers.get("Location")
        if not location:
            raise FetchError(f"HTTP {resp.status} redirect without a Location header", status=resp.status, url=url)
        if hop >= self.options.max_redirects:
            raise FetchError(f"too many redirects (more than {self.options.max_redirects})", status=resp.status,
                             url=url)
        target = urljoin(current, location)
        if url_scheme(target) not in ("http", "https"):
            raise AccessDeniedError(f"redirect to a non-HTTP URL refused: {target}", status=resp.status, url=url)
        try:
            self.policy.check_remote(target)
        except AccessDeniedError as exc:  # name the URL that was asked for; the target is in the message
            raise AccessDeniedError(f"redirect to {target} refused: {exc.message}", status=resp.status,
                                    url=url) from exc
        self.stats.add(redirects=1)
        return target

    async def _read_answer(self, url: str, current: str, resp: aiohttp.ClientResponse, start: int,
                           length: int, short_ok: bool = False) -> bytes:
        """Check the status and headers, then read exactly the requested bytes and no more."""
        status = resp.status
        where = "" if current == url else f" (redirected to {current})"
        if status == 206:
            return await self._read_partial(url, resp, start, length, short_ok)
        if status == 200:
            return await self._read_ignored_range(url, resp, start, length, short_ok)
        if status == 416 and short_ok:
            await _drain_small(resp)
            return b""
        if status == 416:
            raise FetchError(f"HTTP 416: bytes {start}-{start + length - 1} are beyond the end of the file{where}",
                             status=status, url=url)
        if status in (408, 429) or (500 <= status <= 599 and status not in _PERMANENT_5XX):
            await _drain_small(resp)
            raise _Retryable(f"HTTP {status} {resp.reason or ''}".strip(), status=status,
                             retry_after=parse_retry_after(resp.headers.get("Retry-After")))
        raise FetchError(f"HTTP {status} {resp.reason or ''}".strip() + where, status=status, url=url)

    async def _read_partial(self, url: str, resp: aiohttp.ClientResponse, start: int, length: int,
                            short_ok: bool = False) -> bytes:
        """A 206: Content-Range must be exactly the asked range and the body exactly ``length`` bytes."""
        header = resp.headers.get("Content-Range")
        parsed = parse_content_range(header)
        if parsed is None:
            raise _Retryable(f"206 with an invalid Content-Range {header!r}", status=206)
        first, last, total = parsed
        want_last = start + length - 1
        if first != start:
            raise _Retryable(f"Content-Range {header!r} does not start at {start}", status=206)
        if last != want_last:
            if total is not None and last == total - 1 and last < want_last:
                if short_ok:
                    length = last - first + 1
                    want_last = last
                else:
                    raise FetchError(f"bytes {start}-{want_last} run past the end of the file ({total} bytes)",
                                     status=206, url=url)
            else:
                raise _Retryable(f"Content-Range {header!r} does not end at {want_last}", status=206)
        if resp.content_length is not None and resp.content_length != length:
            raise _Retryable(f"Content-Length {resp.content_length} for a {length}-byte range", status=206)
        data = await resp.content.readexactly(length)
        self.stats.add(bytes=len(data))
        if resp.content_length is None and await resp.content.read(1):
            raise _Retryable("the body is longer than the asked range", status=206)
        return data

    async def _read_ignored_range(self, url: str, resp: aiohttp.ClientResponse, start: int, length: int,
                                  short_ok: bool = False) -> bytes:
        """A 200 to a Range request: read only the prefix that holds the range, then drop the connection."""
        size = resp.content_length
        need = start + length
        if start == 0 and size == length:
            data = await resp.content.readexactly(length)  # the whole file is exactly the range
            self.stats.add(bytes=len(data))
            return data
        if size is not None and size < need and short_ok and size <= self.options.ignored_range_max:
            data = await resp.content.readexactly(size)
            self.stats.add(bytes=len(data))
            return data[start:]
        if size is not None and size < need:
            raise FetchError(f"bytes {start}-{need - 1} run past the end of the file ({size} bytes)",
                             status=200, url=url)
        if need > self.options.ignored_range_max:
            resp.close()
            raise FetchError(
                f"server ignores Range requests (answered 200 with the whole file); refusing to download "
                f"{need} bytes to get {length}", status=200, url=url)
        try:
            prefix = await resp.content.readexactly(need)
        except asyncio.IncompleteReadError as exc:
            raise FetchError(f"bytes {start}-{need - 1} run past the end of the file ({len(exc.partial)} bytes)",
                             status=200, url=url) from exc
        self.stats.add(bytes=len(prefix))
        resp.close()  # do not download the rest of the file
        return prefix[start:]
