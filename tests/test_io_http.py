"""HttpBackend / DefaultBackend against the real local range server: bytes, coalescing, concurrency, faults."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import _paths
import pytest
from httpserver import RangeServer

from rasterduck.errors import AccessDeniedError, FetchError
from rasterduck.io import AccessPolicy, DefaultBackend, HttpOptions, run_sync, s3_to_https
from rasterduck.io.http import LaunchPacer, parse_content_range, parse_retry_after, retry_delay
from rasterduck.io.loop import get_loop

REL = "geotiff/rasterio/RGB.byte.tif"  # 1.7 MB
FAST = HttpOptions(backoff_base=0.005, backoff_max=0.02, connect_timeout=2.0, first_byte_timeout=5.0,
                   read_timeout=5.0, max_attempts=5)
MiB = 1024 * 1024


def file_bytes(rel: str = REL) -> bytes:
    return (_paths.testdata_dir() / rel).read_bytes()


@pytest.fixture
def make_backend() -> Iterator[Callable[..., DefaultBackend]]:
    made: list[DefaultBackend] = []

    def make(http: HttpOptions = FAST, **kw: Any) -> DefaultBackend:
        backend = DefaultBackend(http=http, **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        run_sync(backend.close())


def read(backend: DefaultBackend, url: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    return run_sync(backend.read_ranges(url, ranges), timeout=30)


# ------------------------------------------------------------------------------------------ bytes
def test_ranges_match_the_file(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    data = file_bytes()
    rng = random.Random(3)
    ranges = [(rng.randrange(len(data) - 5000), rng.randrange(1, 5000)) for _ in range(60)]
    ranges += [(0, 16), (0, 16), (len(data) - 1, 1), (12, 0)]
    out = read(make_backend(), server.url(REL), ranges)
    assert out == [data[s:s + n] for s, n in ranges]
    assert all(isinstance(b, bytes | memoryview) for b in out)  # parts of a coalesced read: zero-copy views


def test_requests_counted_after_coalescing(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    data = file_bytes()
    # three clusters of tiles: inside a cluster the gaps are < 1 KiB, clusters are ~500 KiB apart
    clusters = [0, 500_000, 1_000_000]
    ranges = [(c + k * 1500, 1000) for c in clusters for k in range(7)]
    random.Random(1).shuffle(ranges)
    backend = make_backend()
    out = read(backend, server.url(REL), ranges)
    assert out == [data[s:s + n] for s, n in ranges]
    assert server.requests == 3
    assert server.per_path == {"/" + REL: 3}
    assert backend.stats.ranges == 21 and backend.stats.merged == 3 and backend.stats.requests == 3
    # with max_gap=0 every tile is its own request
    server.reset_counters()
    read(make_backend(max_gap=0), server.url(REL), ranges)
    assert server.requests == 21


def test_empty_and_zero_length_make_no_request(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    backend = make_backend()
    assert read(backend, server.url(REL), []) == []
    assert read(backend, server.url(REL), [(10, 0), (99, 0)]) == [b"", b""]
    assert server.requests == 0


def test_s3_urls_go_to_the_bucket_endpoint(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    backend = make_backend(http=HttpOptions(s3_endpoint=server.base_url))
    out = read(backend, "s3://geotiff/rasterio/RGB.byte.tif", [(100, 50)])
    assert out == [file_bytes()[100:150]]
    assert server.per_path == {"/" + REL: 1}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/a/b.tif", "https://bucket.s3.amazonaws.com/a/b.tif"),
        ("s3://my.bucket/k.tif", "https://s3.amazonaws.com/my.bucket/k.tif"),
        ("s3://bucket/dir with space/x+y.tif", "https://bucket.s3.amazonaws.com/dir%20with%20space/x%2By.tif"),
    ],
)
def test_s3_to_https(url: str, expected: str) -> None:
    assert s3_to_https(url) == expected


def test_policy_refuses_schemes_before_any_request(server: RangeServer,
                                                   make_backend: Callable[..., DefaultBackend]) -> None:
    https_only = make_backend(policy=AccessPolicy(allowed_schemes=("https",)))
    with pytest.raises(AccessDeniedError, match="scheme 'http'"):
        read(https_only, server.url(REL), [(0, 10)])
    with pytest.raises(AccessDeniedError):
        read(make_backend(), "gs://bucket/x.tif", [(0, 10)])
    assert server.requests == 0


# ------------------------------------------------------------------------------------------ concurrency
def test_concurrency_is_bounded_and_filled(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    server.set_latency(0.1)
    backend = make_backend(max_concurrent=8, max_gap=0)
    ranges = [(k * 20_000, 100) for k in range(32)]  # 32 separate requests, 4 waves of 8
    data = file_bytes()
    assert read(backend, server.url(REL), ranges) == [data[s:s + n] for s, n in ranges]
    assert server.requests == 32
    assert server.peak_in_flight == 8
    # keep-alive: the pool never opened more connections than the limit
    assert server.connections <= 8


def read_each_concurrently(backend: DefaultBackend, urls: list[str]) -> None:
    """Read 10 bytes at offset k of the k-th URL (all the same file), every URL at once; check the bytes."""
    import asyncio

    async def many() -> list[list[bytes]]:
        return await asyncio.gather(*(backend.read_ranges(u, [(k, 10)]) for k, u in enumerate(urls)))

    out = run_sync(many(), timeout=30)
    data = file_bytes()
    assert [o[0] for o in out] == [data[k:k + 10] for k in range(len(urls))]


def test_limit_is_shared_across_urls(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    server.set_latency(0.1)
    backend = make_backend(max_concurrent=6)
    urls = [server.vurl(f"scene{k}", REL) for k in range(24)]
    read_each_concurrently(backend, urls)
    assert server.requests == 24 and len(server.per_path) == 24
    assert server.peak_in_flight == 6
    # a second round reuses the pooled keep-alive connections
    opened = server.connections
    read_each_concurrently(backend, urls)
    assert server.connections == opened


def test_a_burst_sends_its_first_requests_before_building_the_last(server: RangeServer,
                                                                   make_backend: Callable[..., DefaultBackend]) -> None:
    """32 requests started together: the first is on the wire before the last one starts (LaunchPacer),
    instead of all 32 being built before any is sent. Events come from aiohttp's trace hooks."""
    import aiohttp

    events: list[tuple[str, str]] = []
    trace = aiohttp.TraceConfig()

    async def started(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
        events.append(("start", params.url.path))

    async def sent(_s: Any, _c: Any, params: aiohttp.TraceRequestHeadersSentParams) -> None:
        events.append(("sent", params.url.path))

    trace.on_request_start.append(started)
    trace.on_request_headers_sent.append(sent)
    backend = make_backend(http=dataclasses.replace(FAST, trace_configs=[trace]), max_concurrent=64)
    urls = [server.vurl(f"burst{k}", REL) for k in range(32)]
    read_each_concurrently(backend, urls)
    kinds = [k for k, _p in events]
    assert kinds.count("start") == kinds.count("sent") == 32
    last_start = max(i for i, k in enumerate(kinds) if k == "start")
    first_sent = kinds.index("sent")
    assert first_sent < last_start, kinds
    # the starts keep the callers' order: first come, first served
    assert [p for k, p in events if k == "start"] == [urlsplit(u).path for u in urls]


def _pass_ticks(n: int, cancel: frozenset[int] = frozenset()) -> tuple[dict[int, int], bool]:
    """Run n tasks through one LaunchPacer, all asking in the same loop iteration; the loop iteration
    (counted by a callback that re-arms itself each iteration) at which each passed, and whether the
    pacer is idle again afterwards. Tasks in `cancel` are cancelled while they wait."""
    import asyncio

    async def main() -> tuple[dict[int, int], bool]:
        loop = asyncio.get_running_loop()
        pacer = LaunchPacer(loop)
        tick = [0]
        running = [True]

        def count() -> None:
            tick[0] += 1
            if running[0]:
                loop.call_soon(count)

        passed: dict[int, int] = {}

        async def one(i: int) -> None:
            await pacer.turn()
            passed[i] = tick[0]

        loop.call_soon(count)
        await asyncio.sleep(0)
        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        await asyncio.sleep(0)  # every task has asked for its turn
        for i in cancel:
            tasks[i].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _ in range(3):
            await asyncio.sleep(0)
        running[0] = False
        return passed, not pacer.busy and not pacer.waiting

    return asyncio.run(main())


def test_launch_pacer_lets_one_start_through_per_loop_iteration() -> None:
    passed, idle = _pass_ticks(10)
    ticks = [passed[i] for i in range(10)]
    assert all(b > a for a, b in itertools.pairwise(ticks)), ticks  # in order, one per iteration
    assert ticks[-1] - ticks[0] <= len(ticks)  # and without idle iterations between them
    assert idle


def test_launch_pacer_skips_cancelled_waiters() -> None:
    passed, idle = _pass_ticks(8, cancel=frozenset({2, 3, 6}))
    assert sorted(passed) == [0, 1, 4, 5, 7]
    ticks = [passed[i] for i in sorted(passed)]
    assert all(b > a for a, b in itertools.pairwise(ticks)), ticks
    assert ticks[-1] - ticks[0] <= len(ticks)  # a cancelled waiter costs no iteration
    assert idle


# ------------------------------------------------------------------------------------------ faults
TRANSIENT: list[tuple[str, dict[str, Any], HttpOptions]] = [
    ("status", {"status": 500}, FAST),
    ("status", {"status": 502}, FAST),
    ("status", {"status": 503}, FAST),
    ("status", {"status": 429, "retry_after": "0"}, FAST),
    ("reset", {}, FAST),
    ("truncate", {}, FAST),
    ("bad_range", {}, FAST),
    ("stall", {"stall": 20}, HttpOptions(backoff_base=0.005, first_byte_timeout=0.3)),
    ("stall", {"stall": 20, "after_bytes": 1000}, HttpOptions(backoff_base=0.005, read_timeout=0.3)),
]


@pytest.mark.parametrize(("kind", "options", "http"), TRANSIENT,
                         ids=[f"{k}-{o.get('status', o.get('after_bytes', ''))}" for k, o, _ in TRANSIENT])
def test_transient_faults_are_retried(server: RangeServer, make_backend: Callable[..., DefaultBackend], kind: str,
                                      options: dict[str, Any], http: HttpOptions) -> None:
    server.add_fault(kind, times=2, **options)
    backend = make_backend(http=http)
    out = read(backend, server.url(REL), [(5000, 200_000)])
    assert out == [file_bytes()[5000:205_000]]
    assert server.requests == 3
    assert backend.stats.retries == 2
    assert [r.fault for r in server.log] == [kind, kind, None]


def test_random_faults_with_seed(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    fault = server.add_fault("status", status=503, rate=0.3, seed=11)
    backend = make_backend(http=HttpOptions(backoff_base=0.002, backoff_max=0.01, max_attempts=20))
    urls = [server.vurl(f"r{k}", REL) for k in range(40)]
    data = file_bytes()
    for k, url in enumerate(urls):
        assert read(backend, url, [(k * 100, 100)]) == [data[k * 100:k * 100 + 100]]
    assert fault.fired > 0
    assert backend.stats.retries == fault.fired
    assert server.requests == 40 + fault.fired


@pytest.mark.parametrize("status", [404, 403, 410, 400, 501])
def test_permanent_status_fails_fast(server: RangeServer, make_backend: Callable[..., DefaultBackend],
                                     status: int) -> None:
    server.add_fault("status", status=status)
    url = server.url(REL)
    with pytest.raises(FetchError) as info:
        read(make_backend(), url, [(0, 100)])
    assert info.value.status == status and not info.value.transient
    assert url in str(info.value) and str(status) in str(info.value)
    assert server.requests == 1


def test_missing_file_is_404(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    with pytest.raises(FetchError) as info:
        read(make_backend(), server.url("geotiff/nope.tif"), [(0, 100)])
    assert info.value.status == 404
    assert server.requests == 1


def test_retries_exhausted(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    server.add_fault("status", status=503)
    url = server.url(REL)
    backend = make_backend(http=HttpOptions(backoff_base=0.001, max_attempts=3))
    with pytest.raises(FetchError) as info:
        read(backend, url, [(0, 100)])
    assert info.value.status == 503 and info.value.transient
    assert "3 attempts" in str(info.value) and url in str(info.value)
    assert server.requests == 3


def test_range_past_end_of_file(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    size = len(file_bytes())
    backend = make_backend()
    with pytest.raises(FetchError) as info:
        read(backend, server.url(REL), [(size + 10, 100)])
    assert info.value.status == 416
    with pytest.raises(FetchError, match="past the end"):
        read(backend, server.url(REL), [(size - 10, 100)])
    assert server.requests == 2  # neither is retried


def test_one_failing_range_fails_the_call(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    server.add_fault("status", status=404, path="/v/bad/*")
    backend = make_backend()
    import asyncio

    async def both() -> Any:
        return await asyncio.gather(backend.read_ranges(server.vurl("ok", REL), [(0, 10)]),
                                    backend.read_ranges(server.vurl("bad", REL), [(0, 10)]))

    with pytest.raises(FetchError, match="404"):
        run_sync(both(), timeout=30)


# ------------------------------------------------------------------------------------------ 200 for a Range
@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    """A 64 MiB file (sparse after a random first 9 MiB): far more than socket buffers can hide."""
    head = random.Random(5).randbytes(9 * MiB)
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(64 * MiB)
    return path, head


def test_200_for_range_reads_only_a_prefix(make_server: Callable[..., RangeServer], big_file: tuple[Path, bytes],
                                           make_backend: Callable[..., DefaultBackend]) -> None:
    path, head = big_file
    srv = make_server(path.parent)
    srv.add_fault("ignore_range")
    backend = make_backend()
    assert read(backend, srv.url("big.bin"), [(1000, 5000)]) == [head[1000:6000]]
    assert backend.stats.bytes == 6000  # what the client read off the socket
    assert srv.wait_idle()
    assert srv.log[0].status == 200
    assert srv.log[0].outcome == "aborted"  # the client dropped the connection
    assert srv.bytes_sent < 32 * MiB


def test_200_for_range_far_into_the_file_is_refused(make_server: Callable[..., RangeServer],
                                                    big_file: tuple[Path, bytes],
                                                    make_backend: Callable[..., DefaultBackend]) -> None:
    path, _ = big_file
    srv = make_server(path.parent)
    srv.add_fault("ignore_range")
    with pytest.raises(FetchError, match="ignores Range") as info:
        read(make_backend(), srv.url("big.bin"), [(8 * MiB, 1000)])
    assert info.value.status == 200 and not info.value.transient
    assert srv.wait_idle()
    assert srv.requests == 1 and srv.bytes_sent < 32 * MiB


def test_200_for_a_range_that_is_the_whole_file(server: RangeServer,
                                                make_backend: Callable[..., DefaultBackend]) -> None:
    data = file_bytes()
    server.add_fault("ignore_range")
    assert read(make_backend(), server.url(REL), [(0, len(data))]) == [data]


# ------------------------------------------------------------------------------------------ redirects
def test_redirect_chain_is_followed(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    server.add_fault("redirect", path="/a", location="/b")
    server.add_fault("redirect", path="/b", location=server.url("c"), status=307)
    server.add_fault("redirect", path="/c", location=REL, status=301)  # relative to /c
    backend = make_backend()
    assert read(backend, server.url("a"), [(10, 20)]) == [file_bytes()[10:30]]
    assert [r.path for r in server.log] == ["/a", "/b", "/c", "/" + REL]
    assert backend.stats.redirects == 3


def test_redirect_limit(server: RangeServer, make_backend: Callable[..., DefaultBackend]) -> None:
    server.add_fault("redirect", path="/loop", location="/loop")
    with pytest.raises(FetchError, match="too many redirects") as info:
        read(make_backend(), server.url("loop"), [(0, 10)])
    assert not info.value.transient
    assert server.requests == 6  # the first request and five redirects


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "s3://bucket/key"])
def test_redirect_to_other_schemes_is_refused(server: RangeServer, make_backend: Callable[..., DefaultBackend],
                                              target: str) -> None:
    server.add_fault("redirect", path="/x", location=target)
    backend = make_backend(policy=AccessPolicy(allow_local=True))
    with pytest.raises(AccessDeniedError, match="redirect"):
        read(backend, server.url("x"), [(0, 10)])
    assert server.requests == 1


# ------------------------------------------------------------------------------------------ resources
def open_sockets() -> set[str]:
    """The sockets this process holds, by inode (``socket:[123]``); unrelated closes cannot confuse it."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_no_leaked_connections_or_fds(make_server: Callable[..., RangeServer]) -> None:
    # a server of its own: the session server may still hold keep-alive connections of other clients
    # (the process-wide default backend pools them by design), which are no leak of this backend
    server = make_server(_paths.testdata_dir())
    get_loop()
    assert server.wait_idle(connections=True)
    before = open_sockets()
    backend = DefaultBackend(http=FAST, max_concurrent=16, max_gap=0)
    ranges = [(k * 10_000, 500) for k in range(64)]
    read(backend, server.url(REL), ranges)
    server.add_fault("reset", times=3)
    server.add_fault("status", status=404, path="/missing")
    read(backend, server.url(REL), ranges)
    with pytest.raises(FetchError):
        read(backend, server.url("missing"), [(0, 1)])
    assert open_sockets() - before  # pooled keep-alive sockets (both ends) are open now
    http_session = run_sync(_session_of(backend))
    run_sync(backend.close())
    assert http_session.closed
    assert server.wait_idle(connections=True)  # the server saw every connection end
    deadline = time.monotonic() + 5
    while open_sockets() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_sockets() - before == set()


async def _session_of(backend: DefaultBackend) -> Any:
    return backend.http.session()


# ------------------------------------------------------------------------------------------ pure helpers
@pytest.mark.parametrize(
    ("header", "expected"),
    [("bytes 0-99/1000", (0, 99, 1000)), ("bytes 5-5/*", (5, 5, None)), ("Bytes 1-2/3", (1, 2, 3)),
     (None, None), ("bytes */1000", None), ("0-99/1000", None), ("bytes 0-99", None)],
)
def test_parse_content_range(header: str | None, expected: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(header) == expected


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=now) == 0.0


def test_retry_delay_backoff_and_cap() -> None:
    opts = HttpOptions(backoff_base=0.1, backoff_max=1.0, retry_after_max=5.0)
    assert retry_delay(1, 3.0, opts) == 3.0
    assert retry_delay(1, 600.0, opts) == 5.0  # Retry-After capped
    rng = random.Random(0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [retry_delay(attempt, None, opts, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spreads over the whole interval


# ------------------------------------------------------------------------------------------ TLS
@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def test_tls_is_verified(make_server: Callable[..., RangeServer], tls_files: tuple[str, str],
                         make_backend: Callable[..., DefaultBackend]) -> None:
    srv = make_server(_paths.testdata_dir(), tls=tls_files)
    url = srv.url(REL)
    assert url.startswith("https://")
    with pytest.raises(FetchError, match="certificate") as info:
        read(make_backend(), url, [(0, 10)])
    assert not info.value.transient
    assert srv.requests == 0 and srv.connections == 1  # refused at the handshake, not retried
    # trusting the certificate's CA makes the same server readable
    trusted = make_backend(http=HttpOptions(ca_file=tls_files[0]))
    assert read(trusted, url, [(0, 10), (5000, 10)]) == [file_bytes()[:10], file_bytes()[5000:5010]]


def test_retries_and_redirects_reuse_the_connection(server: RangeServer,
                                                    make_backend: Callable[..., DefaultBackend]) -> None:
    server.add_fault("status", status=503, times=3)
    server.add_fault("redirect", path="/a", location="/" + REL)
    backend = make_backend(max_concurrent=1)
    assert read(backend, server.url("a"), [(0, 10)]) == [file_bytes()[:10]]
    assert server.requests == 5
    assert server.connections == 1  # short error and redirect bodies were read, keep-alive kept
