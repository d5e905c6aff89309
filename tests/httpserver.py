"""A real HTTP/1.1 range server for tests and benchmarks, with latency, bandwidth caps and fault injection.

It serves files under one root folder on 127.0.0.1 with keep-alive, HEAD and single byte ranges
(206 + Content-Range, 416 when unsatisfiable). Everything is changeable while it runs, from any thread:

    with RangeServer(root) as srv:
        srv.set_latency(0.05)                       # first-byte latency, seconds
        srv.add_fault("status", status=503, times=2)  # the first two requests answer 503
        url = srv.url("geotiff/gdal/byte.tif")      # or srv.vurl("any-tag", "geotiff/gdal/byte.tif")
        ...
        srv.requests, srv.bytes_sent, srv.per_path, srv.peak_in_flight, srv.log

Virtual URLs: ``/v/<anything>/<relpath>`` serves ``<relpath>``, so one file can appear under many URLs;
``alias(url_path, relpath)`` maps one exact path. Fault kinds (see ``add_fault``): ``status``, ``reset``,
``stall``, ``truncate``, ``bad_range``, ``ignore_range``, ``redirect``.

Command line (benchmarks): ``python tests/httpserver.py ROOT --port 8123 --latency 0.04``; it prints
``serving ROOT at http://127.0.0.1:PORT`` and runs until interrupted. The module needs only the standard
library, so benchmarks can import it without pytest (``sys.path.insert(0, "tests")``).
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import os
import random
import re
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

FAULT_KINDS = ("status", "reset", "stall", "truncate", "bad_range", "ignore_range", "redirect")
_CHUNK = 64 * 1024
_SENDFILE_CHUNK = 1024 * 1024
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Fault:
    """One fault rule: which requests it hits (path glob, first N, seeded rate) and what it does."""

    kind: str
    path: str = "*"
    times: int | None = None
    rate: float | None = None
    seed: int = 0
    status: int = 503
    retry_after: str | None = None
    location: str | None = None
    after_bytes: int | None = None
    stall: float = 60.0
    shift: int = 1
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        self._rng = random.Random(self.seed)

    def take(self, path: str) -> bool:
        """Decide (under the server lock) whether this rule fires for a request of ``path``."""
        if not fnmatch.fnmatchcase(path, self.path):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.rate is not None and self._rng.random() >= self.rate:
            return False
        self.fired += 1
        return True


@dataclass
class RequestRecord:
    """One served request, as kept in ``RangeServer.log``."""

    method: str
    path: str
    range: str | None
    status: int = 0
    bytes_sent: int = 0
    fault: str | None = None
    outcome: str = "ok"  # ok | aborted (client went away) | reset | truncated | stalled
    started: float = 0.0
    finished: float = 0.0


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    owner: RangeServer

    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        """Accept; with TLS, wrap the socket here and shake hands in the handler thread."""
        sock, addr = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up or reject our certificate are normal here; report anything else."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError | ssl.SSLError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes; no 40 ms delayed-ACK stalls
    server: _Httpd

    def setup(self) -> None:
        self.server.owner._connection_opened(self.request)
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except BaseException:
                self.server.owner._connection_closed(self.request)
                raise
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._connection_closed(self.request)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; the request log is kept in ``RangeServer.log``."""

    def do_GET(self) -> None:
        self.server.owner._serve(self, head=False)

    def do_HEAD(self) -> None:
        self.server.owner._serve(self, head=True)


class RangeServer:
    """A threaded HTTP/1.1 file server on 127.0.0.1 for range-request tests; see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        bandwidth: float | None = None,
        virtual_prefix: str = "/v/",
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.port = port
        self.virtual_prefix = virtual_prefix
        self.tls = tls  # (certfile, keyfile): serve HTTPS
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._default_latency = latency
        self._default_bandwidth = bandwidth
        self._httpd: _Httpd | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.latency = latency
        self.bandwidth = bandwidth
        self.faults: list[Fault] = []
        self.aliases: dict[str, str] = {}
        self.in_flight = 0
        self.reset_counters()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> RangeServer:
        """Bind and serve in a daemon thread; returns self."""
        if self._httpd is not None:
            return self
        self._stop.clear()
        httpd = _Httpd((self.host, self.port), _Handler)
        httpd.owner = self
        if self.tls is not None:
            httpd.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            httpd.tls.load_cert_chain(*self.tls)
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"RangeServer:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and drop every open connection."""
        httpd = self._httpd
        if httpd is None:
            return
        self._stop.set()
        httpd.shutdown()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._httpd = None

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- configuration
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def url(self, relpath: str = "") -> str:
        """The URL of a file given by its path relative to the root."""
        return f"{self.base_url}/{relpath.lstrip('/')}"

    def vurl(self, tag: str, relpath: str) -> str:
        """A distinct virtual URL (``/v/<tag>/<relpath>``) that serves the same file as ``url(relpath)``."""
        return f"{self.base_url}{self.virtual_prefix}{tag}/{relpath.lstrip('/')}"

    def set_latency(self, seconds: float) -> None:
        """First-byte latency applied to every following request."""
        with self._lock:
            self.latency = float(seconds)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Cap each response body at this rate (None removes the cap)."""
        with self._lock:
            self.bandwidth = bytes_per_second

    def alias(self, url_path: str, relpath: str) -> None:
        """Serve file ``relpath`` at the exact path ``url_path`` too."""
        with self._lock:
            self.aliases[url_path] = relpath

    def add_fault(self, kind: str, *, path: str = "*", times: int | None = None, rate: float | None = None,
                  seed: int = 0, **options: Any) -> Fault:
        """Add a fault rule; the first rule that fires for a request decides its fault.

        Selection: ``path`` glob on the request path, ``times`` (only the first N matching requests),
        ``rate`` (probability drawn from ``random.Random(seed)``). Options per kind:
        status: ``status`` (500/503/429/404/403...), ``retry_after`` (header value);
        reset / truncate: ``after_bytes`` body bytes sent before the RST / the early close (default half);
        stall: ``stall`` seconds of silence (ends early when the client leaves), ``after_bytes`` (None:
        stall before the status line); bad_range: ``shift`` added to the start of data and Content-Range;
        ignore_range: answer 200 with the whole file; redirect: ``location`` (path or absolute URL), ``status``
        (default 302).
        """
        if kind == "redirect":
            options.setdefault("status", 302)
            if not options.get("location"):
                raise ValueError("a redirect fault needs location=")
        fault = Fault(kind=kind, path=path, times=times, rate=rate, seed=seed, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        with self._lock:
            self.faults.clear()

    def reset_counters(self) -> None:
        """Zero the counters and empty the request log (requests in flight stay counted)."""
        with self._lock:
            self.requests = 0
            self.bytes_sent = 0
            self.connections = 0
            self.peak_in_flight = self.in_flight
            self.per_path: collections.Counter[str] = collections.Counter()
            self.log: list[RequestRecord] = []

    def reset(self) -> None:
        """Back to the start state: counters, faults, aliases, latency and bandwidth."""
        with self._lock:
            self.faults.clear()
            self.aliases.clear()
            self.latency = self._default_latency
            self.bandwidth = self._default_bandwidth
        self.reset_counters()

    @property
    def open_connections(self) -> int:
        """Client connections currently open on the server side."""
        with self._lock:
            return len(self._conns)

    def wait_idle(self, timeout: float = 5.0, connections: bool = False) -> bool:
        """Wait until no request is in flight (and no connection is open if asked); True when reached."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.in_flight == 0 and (not connections or not self._conns):
                    return True
            time.sleep(0.01)
        return False

    # ----------------------------------------------------------------- internals
    def _connection_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)
            self.connections += 1

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def _resolve(self, path: str) -> Path | None:
        with self._lock:
            rel = self.aliases.get(path)
        if rel is None:
            rel = path
            if path.startswith(self.virtual_prefix):
                rest = path[len(self.virtual_prefix):]
                rel = rest.split("/", 1)[1] if "/" in rest else ""
        target = (self.root / rel.lstrip("/")).resolve()
        if not target.is_relative_to(self.root) or not target.is_file():
            return None
        return target

    def _serve(self, h: _Handler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        rec = RequestRecord(method=h.command, path=path, range=h.headers.get("Range"), started=time.monotonic())
        with self._lock:
            self.requests += 1
            self.per_path[path] += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self.log.append(rec)
            latency, bandwidth = self.latency, self.bandwidth
            fault = next((f for f in self.faults if f.take(path)), None)
        rec.fault = fault.kind if fault else None
        try:
            if latency > 0:
                self._stop.wait(latency)
            self._respond(h, rec, fault, head, bandwidth)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            rec.outcome = "aborted"
            h.close_connection = True
        finally:
            rec.finished = time.monotonic()
            with self._lock:
                self.in_flight -= 1

    def _respond(self, h: _Handler, rec: RequestRecord, fault: Fault | None, head: bool,
                 bandwidth: float | None) -> None:
        kind = fault.kind if fault else None
        if fault is not None and kind == "stall" and fault.after_bytes is None:
            rec.outcome = "stalled"
            if self._stall(h, fault.stall):
                rec.outcome = "aborted"
            h.close_connection = True
            return
        if fault is not None and kind == "status":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._simple(h, rec, fault.status, f"injected {fault.status}\n".encode(), head, extra)
            return
        if fault is not None and kind == "redirect":
            assert fault.location is not None
            self._simple(h, rec, fault.status, b"", head, {"Location": fault.location})
            return
        target = self._resolve(rec.path)
        if target is None:
            self._simple(h, rec, 404, b"not found\n", head)
            return
        size = target.stat().st_size
        start, end, status = 0, size - 1, 200
        if rec.range is not None and kind != "ignore_range":
            parsed = _parse_range(rec.range, size)
            if parsed == "unsatisfiable":
                self._simple(h, rec, 416, b"", head, {"Content-Range": f"bytes */{size}"})
                return
            if isinstance(parsed, tuple):
                start, end = parsed
                status = 206
        length = end - start + 1 if size else 0
        data_start = start
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                   "Content-Length": str(length)}
        if status == 206:
            if fault is not None and kind == "bad_range":
                data_start = min(start + fault.shift, max(size - length, 0))
                headers["Content-Range"] = f"bytes {data_start}-{data_start + length - 1}/{size}"
            else:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        rec.status = status
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        if head:
            return
        limit = length
        if fault is not None and kind in ("reset", "truncate", "stall"):
            limit = fault.after_bytes if fault.after_bytes is not None else length // 2
            limit = min(limit, length)
        self._send_file(h, rec, target, data_start, limit, bandwidth)
        if fault is None or (limit >= length and kind != "stall"):
            return
        h.close_connection = True
        if kind == "reset":
            rec.outcome = "reset"
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        elif kind == "truncate":
            rec.outcome = "truncated"
            h.connection.shutdown(socket.SHUT_WR)
        elif kind == "stall":
            rec.outcome = "aborted" if self._stall(h, fault.stall) else "stalled"

    def _simple(self, h: _Handler, rec: RequestRecord, status: int, body: bytes, head: bool,
                extra: dict[str, str] | None = None) -> None:
        rec.status = status
        h.send_response(status)
        for key, value in (extra or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head and body:
            self._count(rec, len(body))
            h.wfile.write(body)

    def _count(self, rec: RequestRecord, n: int) -> None:
        rec.bytes_sent += n
        with self._lock:
            self.bytes_sent += n

    def _send_file(self, h: _Handler, rec: RequestRecord, target: Path, start: int, length: int,
                   bandwidth: float | None) -> None:
        t0 = time.monotonic()
        sent = 0
        with open(target, "rb") as f:
            if not bandwidth and not isinstance(h.connection, ssl.SSLSocket):
                # zero-copy from the page cache: the server, standing in for remote object storage, should
                # take as little of the machine's CPU as it can (benchmarks share the cores with it)
                h.wfile.flush()
                while sent < length:
                    n = min(_SENDFILE_CHUNK, length - sent)
                    self._count(rec, n)  # before the write, so a client never sees stale counters
                    done = os.sendfile(h.connection.fileno(), f.fileno(), start + sent, n)
                    if done <= 0:
                        break
                    if done < n:
                        self._count(rec, done - n)
                    sent += done
                return
            f.seek(start)
            while sent < length:
                chunk = f.read(min(_CHUNK, length - sent))
                if not chunk:
                    break
                self._count(rec, len(chunk))  # before the write, so a client never sees stale counters
                h.wfile.write(chunk)
                sent += len(chunk)
                if bandwidth:
                    ahead = sent / bandwidth - (time.monotonic() - t0)
                    if ahead > 0 and self._stop.wait(ahead):
                        return

    def _stall(self, h: _Handler, seconds: float) -> bool:
        """Stay silent for ``seconds``; return True as soon as the client hangs up (or the server stops)."""
        sock = h.connection
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            readable, _, _ = select.select([sock], [], [], min(left, 0.05))
            if readable:
                if isinstance(sock, ssl.SSLSocket):
                    return True  # no MSG_PEEK on TLS: any activity counts as the client leaving
                try:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        return True
                except OSError:
                    return True
                time.sleep(min(left, 0.05))
        return True


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive) of a single ``bytes=`` range, "unsatisfiable", or None to ignore it."""
    m = _RANGE_RE.match(header.strip())
    if m is None:
        return None  # multiple or malformed ranges: serve the whole file, as RFC 9110 allows
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(size - n, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignore the header
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    return start, min(end, size - 1)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: serve ROOT until interrupted."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="first-byte latency in seconds")
    ap.add_argument("--bandwidth", type=float, default=None, help="per-response cap in bytes/s")
    args = ap.parse_args(argv)
    srv = RangeServer(args.root, host=args.host, port=args.port, latency=args.latency, bandwidth=args.bandwidth)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with srv:
        print(f"serving {srv.root} at {srv.base_url}", flush=True)
        try:
            while not done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print(f"requests={srv.requests} bytes_sent={srv.bytes_sent} peak_in_flight={srv.peak_in_flight}",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
