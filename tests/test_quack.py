"""The stock DuckDB CLI calls rasterduck's Python UDFs through a Quack server (DuckDB 1.5 environment).

The end-to-end tests start serve() on a connection with an arrow UDF, run the real ``duckdb`` binary
from the duckdb-cli package as a subprocess, and compare its JSON output with values computed here.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from duckdb.func import ARROW

from rasterduck.duck import quack

NEEDED = ("duckdb_cli", "duckdb_extension_quack", "duckdb_extension_httpfs")
MISSING = [p for p in NEEDED if importlib.util.find_spec(p) is None]
ENV15 = duckdb.__version__.startswith("1.5") and not MISSING
REASON = (
    f"needs duckdb 1.5.x with {', '.join(NEEDED)} (the CLI-1.5 CI environment); "
    f"have duckdb {duckdb.__version__}, missing {MISSING or 'nothing'}"
)

N = 300  # elements per returned list
NROWS = 5000  # more than two DuckDB chunks, so the UDF is called several times


def expected_list(i: int) -> list[int]:
    """What ``ramp(i)`` must return, computed with plain integers."""
    return [(i * 1000 + k * 7) % 65536 for k in range(N)]


def _ramp(ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    i = np.asarray(ids.to_numpy(), dtype=np.int64)
    vals = ((i[:, None] * 1000 + np.arange(N, dtype=np.int64)[None, :] * 7) % 65536).astype(np.uint16)
    offsets = np.arange(0, len(i) * N + 1, N, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(vals.ravel()))


def _struct(ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    lists = _ramp(ids)
    names = pa.array([f"row{v}" for v in ids.to_pylist()])
    return pa.StructArray.from_arrays([lists, names], names=["data", "name"])


def run_cli(sql: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI binary on ``sql`` with JSON output; never let it download extensions."""
    cmd = [str(quack.cli_path()), "-json", "-c", "SET autoinstall_known_extensions = false; " + sql]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of TCP sockets in LISTEN state on ``port``, read from the kernel's tables."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != "0A":  # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr)
            if width == 8:
                found.add(".".join(str(b) for b in raw[::-1]))
            else:
                found.add(raw.hex())
    return found


@pytest.fixture
def server() -> Iterator[quack.QuackServer]:
    con = duckdb.connect()
    con.create_function("ramp", _ramp, ["BIGINT"], "USMALLINT[]", type=ARROW)
    con.create_function(
        "ramp_struct", _struct, ["BIGINT"], "STRUCT(data USMALLINT[], name VARCHAR)", type=ARROW
    )
    srv = quack.serve(con)
    yield srv
    srv.stop()
    con.close()


def test_extension_path_names_the_missing_package() -> None:
    with pytest.raises(quack.QuackUnavailableError, match="duckdb-extension-nosuchext"):
        quack.extension_path("nosuchext")
    with pytest.raises(ValueError):
        quack.extension_path("../quack")


def test_serve_refuses_non_loopback_hosts() -> None:
    con = duckdb.connect()
    with pytest.raises(ValueError, match="loopback"):
        quack.serve(con, host="0.0.0.0")
    with pytest.raises(ValueError, match="token"):
        quack.serve(con, token="ab")


@pytest.mark.parametrize("name", ["quack", "httpfs"])
@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_extension_path_matches_installed_version(name: str) -> None:
    path = quack.extension_path(name)
    assert path.is_file() and path.name == f"{name}.duckdb_extension"
    assert path.parent.name == f"v{duckdb.__version__}"
    con = duckdb.connect()
    how = quack.load_extension(con, name)
    loaded = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = ?", [name]).fetchall()
    assert loaded == [(True,)], how
    assert quack.load_extension(con, name) == "loaded"


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_cli_binary_is_the_matching_duckdb() -> None:
    out = subprocess.run([str(quack.cli_path()), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == f"v{duckdb.__version__}"


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_cli_calls_python_udf_through_quack(server: quack.QuackServer) -> None:
    query = f"SELECT range AS i, ramp(range) AS v FROM range({NROWS}) ORDER BY i"
    load = quack.extension_load_sql("httpfs") + quack.extension_load_sql("quack")
    out = run_cli(f"{load} SELECT i, v, typeof(v) AS t FROM {server.remote_call(query)} ORDER BY i;")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == NROWS
    assert {r["t"] for r in rows} == {"USMALLINT[]"}
    for r in rows:
        assert r["v"] == expected_list(r["i"]), r["i"]


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_struct_with_list_survives_the_wire(server: quack.QuackServer) -> None:
    load = quack.extension_load_sql("httpfs") + quack.extension_load_sql("quack")
    call = server.remote_call("SELECT ramp_struct(41) AS s, '\\x00\\xFF'::BLOB AS b")
    out = run_cli(f"{load} SELECT s, typeof(s) AS t, typeof(b) AS tb, hex(b) AS hb FROM {call};")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["t"] == 'STRUCT("data" USMALLINT[], "name" VARCHAR)'
    assert (row["tb"], row["hb"]) == ("BLOB", "00FF")
    assert row["s"] == {"data": expected_list(41), "name": "row41"}


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_several_clients_at_once(server: quack.QuackServer) -> None:
    results: dict[int, subprocess.CompletedProcess[str]] = {}

    def client(i: int) -> None:
        results[i] = run_cli(server.client_sql(f"SELECT ramp({i}) AS v"))

    threads = [threading.Thread(target=client, args=(i,)) for i in (3, 4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, out in results.items():
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [{"v": expected_list(i)}]


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_wrong_token_is_refused(server: quack.QuackServer) -> None:
    good = server.client_sql("SELECT 1 AS one")
    bad = good.replace(server.token, server.token[::-1] + "x")
    assert bad != good
    out = run_cli(bad)
    assert out.returncode != 0
    assert "Authentication failed" in out.stderr
    assert out.stdout.strip() == ""


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_binds_loopback_only_and_stops(server: quack.QuackServer) -> None:
    assert server.host == "127.0.0.1" and 0 < server.port < 65536
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert listening_addresses(server.port) == {"127.0.0.1"}
    server.stop()
    assert not server.running
    assert listening_addresses(server.port) == set()
    out = run_cli(server.client_sql("SELECT 1 AS one"))
    assert out.returncode != 0 and "connect" in out.stderr.lower()
    server.stop()  # idempotent


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_given_port_and_token_and_wait() -> None:
    con = duckdb.connect()
    port = quack._free_port("127.0.0.1")
    with quack.serve(con, port=port, token="rasterduck-test-token") as srv:
        assert (srv.port, srv.token, srv.uri) == (port, "rasterduck-test-token", f"quack:127.0.0.1:{port}")
        assert srv.wait(timeout=0.05) is False
        stopper = threading.Timer(0.2, srv.stop)
        stopper.start()
        assert srv.wait() is True
        stopper.join()
    with socket.socket() as other:  # a port another program listens on
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(quack.QuackUnavailableError, match="could not start"):
            quack.serve(con, port=other.getsockname()[1])
    with quack.serve(con) as first, pytest.raises(quack.QuackUnavailableError, match="already"):
        quack.serve(con, port=first.port)
