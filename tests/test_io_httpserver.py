"""The test HTTP server itself, checked with the standard library's http.client (an independent client)."""

from __future__ import annotations

import http.client
import subprocess
import sys
from pathlib import Path

import _paths
import pytest
from httpserver import RangeServer, _parse_range

REL = "geotiff/gdal/byte.tif"


def data() -> bytes:
    return (_paths.testdata_dir() / REL).read_bytes()


def get(srv: RangeServer, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_range_head_and_416(server: RangeServer) -> None:
    d = data()
    size = len(d)
    status, headers, body = get(server, "/" + REL, {"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (206, d[10:20], f"bytes 10-19/{size}")
    status, headers, body = get(server, "/" + REL, {"Range": "bytes=-5"})
    assert (status, body) == (206, d[-5:])
    status, headers, body = get(server, "/" + REL, {"Range": f"bytes={size - 3}-"})
    assert (status, body) == (206, d[-3:])
    status, headers, body = get(server, "/" + REL, {"Range": f"bytes={size - 3}-{size + 100}"})
    assert (status, body) == (206, d[-3:])
    status, headers, _ = get(server, "/" + REL, {"Range": f"bytes={size}-{size + 10}"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    status, headers, body = get(server, "/" + REL, method="HEAD")
    assert (status, body, int(headers["Content-Length"])) == (200, b"", size)
    status, _, body = get(server, "/" + REL)
    assert (status, body) == (200, d)
    assert get(server, "/geotiff/missing.tif")[0] == 404
    assert get(server, "/../../etc/passwd")[0] == 404
    assert server.requests == 9


def test_keep_alive_counters_and_virtual_urls(server: RangeServer) -> None:
    d = data()
    server.alias("/alias.tif", REL)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    paths = ["/v/a/" + REL, "/v/b/" + REL, "/alias.tif", "/v/a/" + REL]
    for k, path in enumerate(paths):
        conn.request("GET", path, headers={"Range": f"bytes={k}-{k + 9}"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == d[k:k + 10]
    conn.close()
    assert server.connections == 1
    assert server.requests == 4 and server.bytes_sent == 40
    assert server.per_path == {"/v/a/" + REL: 2, "/v/b/" + REL: 1, "/alias.tif": 1}
    assert [r.range for r in server.log] == [f"bytes={k}-{k + 9}" for k in range(4)]


def test_fault_selection(server: RangeServer) -> None:
    first_two = server.add_fault("status", status=500, path="/v/x/*", times=2)
    assert [get(server, "/v/x/" + REL)[0] for _ in range(3)] == [500, 500, 200]
    assert get(server, "/" + REL)[0] == 200  # path does not match
    assert first_two.fired == 2
    server.clear_faults()
    server.add_fault("status", status=429, retry_after="3", path="/" + REL)
    status, headers, _ = get(server, "/" + REL)
    assert status == 429 and headers["Retry-After"] == "3"
    server.clear_faults()
    # a seeded rate gives the same pattern twice
    patterns = []
    for _ in range(2):
        server.clear_faults()
        server.add_fault("status", status=503, rate=0.5, seed=42)
        patterns.append([get(server, "/" + REL)[0] for _ in range(20)])
    assert patterns[0] == patterns[1] and 0 < patterns[0].count(503) < 20


def test_body_faults(server: RangeServer) -> None:
    d = data()
    server.add_fault("bad_range", times=1, shift=3)
    status, headers, body = get(server, "/" + REL, {"Range": "bytes=10-19"})
    assert status == 206 and headers["Content-Range"].startswith("bytes 13-22/") and body == d[13:23]
    server.add_fault("ignore_range", times=1)
    status, _, body = get(server, "/" + REL, {"Range": "bytes=10-19"})
    assert status == 200 and body == d
    server.add_fault("truncate", times=1, after_bytes=7)
    with pytest.raises(http.client.IncompleteRead):
        get(server, "/" + REL, {"Range": "bytes=0-99"})
    server.add_fault("reset", times=1, after_bytes=7)
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        get(server, "/" + REL, {"Range": "bytes=0-99"})
    server.add_fault("redirect", times=1, location="/elsewhere")
    status, headers, _ = get(server, "/" + REL)
    assert status == 302 and headers["Location"] == "/elsewhere"
    assert server.wait_idle()
    assert [r.outcome for r in server.log] == ["ok", "ok", "truncated", "reset", "ok"]


def test_parse_range() -> None:
    assert _parse_range("bytes=0-9", 100) == (0, 9)
    assert _parse_range("bytes=90-", 100) == (90, 99)
    assert _parse_range("bytes=-10", 100) == (90, 99)
    assert _parse_range("bytes=-1000", 100) == (0, 99)
    assert _parse_range("bytes=100-", 100) == "unsatisfiable"
    assert _parse_range("bytes=0-1,5-6", 100) is None
    assert _parse_range("items=0-1", 100) is None


def test_command_line(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"0123456789")
    script = Path(__file__).with_name("httpserver.py")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), "--latency", "0.01"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving ")
        url = line.split(" at ")[1].strip()
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/f.bin", headers={"Range": "bytes=2-4"})
        assert conn.getresponse().read() == b"234"
        conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "requests=1" in err
