"""`rasterduck serve` + the stock DuckDB CLI (duckdb-cli 1.5.5 and the quack/httpfs extension packages).

The server runs as a subprocess (`python -m rasterduck.cli serve`), the client is the real `duckdb`
binary running the README join through `quack_query`; its JSON rows are compared with rasterio.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import rasterduck
from rasterduck.duck import quack

from .httpserver import RangeServer
from .test_duck_helpers import aois_for, assert_cog_rows_match, corpus_path, rasterio_pixels, sql_aoi_values
from .test_quack import ENV15, REASON, run_cli

SRC = Path(__file__).resolve().parents[1] / "src"
TOKEN = "rasterduck-serve-test"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _read_until(proc: subprocess.Popen[bytes], marker: str, guard: float = 60.0) -> str:
    """The server's stdout up to `marker` (read unbuffered from the pipe; hang guard `guard` seconds)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    end = time.monotonic() + guard
    while marker.encode() not in seen:
        assert proc.poll() is None, f"server exited: {seen!r} {proc.stderr.read() if proc.stderr else b''!r}"
        left = end - time.monotonic()
        assert left > 0, f"server said {seen!r}"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            seen += os.read(fd, 65536)
    return seen.decode()


@pytest.fixture
def served(http_server: RangeServer, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    coll = rasterduck.build_collection([http_server.url("geotiff/rio-tiler/cog.tif")])
    path = coll.to_parquet(tmp_path / "coll.parquet")
    port = quack._free_port("127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rasterduck.cli", "serve", str(tmp_path / "served.duckdb"), "--port", str(port),
         "--token", TOKEN, "--attach", f"coll={path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        _read_until(proc, "token:")
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.cli15
@pytest.mark.skipif(not ENV15, reason=REASON)
def test_stock_cli_runs_the_readme_join_through_rasterduck_serve(served: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = served
    aois = aois_for(corpus_path("rio-tiler/cog.tif"))
    inner = (f"SELECT aoi.id AS aoi_id, r.id AS rid, load_bands(r, aoi.geom, ['b1']) AS px "
             f"FROM coll r JOIN {sql_aoi_values(aois)} ON raster_intersects(r, aoi.geom)")
    call = (f"quack_query('quack:127.0.0.1:{port}', '{inner.replace(chr(39), chr(39) * 2)}', "
            f"token := '{TOKEN}', disable_ssl := true)")
    load = quack.extension_load_sql("httpfs") + quack.extension_load_sql("quack")
    out = run_cli(f"{load} SELECT aoi_id, px, typeof(px) AS t FROM {call} ORDER BY aoi_id;")
    assert out.returncode == 0, out.stderr
    rows = {r["aoi_id"]: r for r in json.loads(out.stdout)}
    assert_cog_rows_match(rows, aois)
    assert len(rows) == 3
    # macros run on the server too (they live in the served database, not a connection)
    call2 = (f"quack_query('quack:127.0.0.1:{port}', 'SELECT masked_max(load_bands(r, ''{aois[0].wkt}'', [''b1'']), "
             f"''b1'') AS m FROM coll r', token := '{TOKEN}', disable_ssl := true)")
    out = run_cli(f"{load} SELECT m FROM {call2};")
    assert out.returncode == 0, out.stderr
    expected = rasterio_pixels(corpus_path("rio-tiler/cog.tif"), aois[0])
    assert expected is not None
    assert json.loads(out.stdout) == [{"m": int(expected["data"][0][expected["valid"]].max())}]
    # load_bands_raw's BLOBs cross the wire intact: the CLI's hex of band 1 is rasterio's little-endian bytes
    call3 = (f"quack_query('quack:127.0.0.1:{port}', 'SELECT load_bands_raw(r, ''{aois[0].wkt}'', [''b1'']) "
             f"AS px FROM coll r', token := '{TOKEN}', disable_ssl := true)")
    out = run_cli(f"{load} SELECT hex(px.data[1]) AS d, hex(px.valid) AS v, px.dtype AS t FROM {call3};")
    assert out.returncode == 0, out.stderr
    [raw] = json.loads(out.stdout)
    assert raw["t"] == "uint16"
    assert bytes.fromhex(raw["d"]) == expected["data"][0].astype("<u2").tobytes()
    assert bytes.fromhex(raw["v"]) == expected["valid"].astype(np.uint8).tobytes()
    proc.send_signal(signal.SIGTERM)
    assert "rasterduck: stopped" in _read_until(proc, "stopped")
    assert proc.wait(30) == 0


@pytest.mark.skipif(ENV15, reason="checks the message given when the Quack extension is not installed")
def test_serve_explains_a_missing_quack_extension(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "rasterduck.cli", "serve", "--port", "1"], capture_output=True,
                         text=True, timeout=120, env=_env(), check=False)
    assert out.returncode == 1
    assert "Error: cannot load DuckDB extension" in out.stderr and "pip install duckdb-extension-" in out.stderr
