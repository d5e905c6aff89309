"""`rasterduck sql`, run as a subprocess: -c, -f, stdin scripts, output modes, interactive with history."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import rasterduck
from rasterduck.duck.format import Table, render
from rasterduck.duck.shell import Shell

from .httpserver import RangeServer
from .test_duck_helpers import aois_for, assert_cog_rows_match, corpus_path, sql_aoi_values

SRC = Path(__file__).resolve().parents[1] / "src"
COG = "geotiff/rio-tiler/cog.tif"


def shell(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `rasterduck sql ARGS` with this interpreter and the repo's sources."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "rasterduck.cli", "sql", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def collection(http_server: RangeServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    coll = rasterduck.build_collection([http_server.url(COG)])
    return coll.to_parquet(tmp_path_factory.mktemp("shell") / "coll.parquet")


def test_readme_join_through_the_shell_equals_rasterio(collection: Path) -> None:
    aois = aois_for(corpus_path("rio-tiler/cog.tif"))
    q = (f"SELECT aoi.id AS aoi_id, r.id AS rid, load_bands(r, aoi.geom, ['b1']) AS px, typeof(px) AS t "
         f"FROM coll r JOIN {sql_aoi_values(aois)} ON raster_intersects(r, aoi.geom) ORDER BY aoi.id;")
    out = shell("-json", "--attach", f"coll={collection}", "-c", q)
    assert out.returncode == 0, out.stderr
    rows = {r["aoi_id"]: r for r in json.loads(out.stdout)}
    assert_cog_rows_match(rows, aois)
    assert len(rows) == 3


SAMPLE = "SELECT 42 AS answer, 'x|y' AS s, [1, 2] AS l, NULL::VARCHAR AS n, 2.5::DOUBLE AS f"


def run_in_process(script: str, mode: str = "box", bail: bool = False) -> tuple[str, str, bool]:
    """Run a script through the Shell class on a fresh connection: (stdout, stderr, failed)."""
    out, err = io.StringIO(), io.StringIO()
    sh = Shell(rasterduck.connect(), mode=mode, out=out, err=err, bail=bail)
    sh.run_script(script)
    return out.getvalue(), err.getvalue(), sh.failed


def test_output_modes() -> None:
    expected = {
        "csv": "answer,s,l,n,f\n42,x|y,\"[1, 2]\",NULL,2.5\n",
        "json": '[{"answer":42,"s":"x|y","l":[1,2],"n":null,"f":2.5}]\n',
        "jsonlines": '{"answer":42,"s":"x|y","l":[1,2],"n":null,"f":2.5}\n',
        "markdown": ("| answer |  s   |   l    |  n   |  f  |\n"
                     "|-------:|------|--------|------|----:|\n"
                     "|     42 | x\\|y | [1, 2] | NULL | 2.5 |\n"),
        "line": "answer = 42\n     s = x|y\n     l = [1, 2]\n     n = NULL\n     f = 2.5\n",
    }
    for mode, want in expected.items():
        out, err, failed = run_in_process(SAMPLE + ";", mode)
        assert (out, err, failed) == (want, "", False), mode
    box = run_in_process(SAMPLE + ";")[0].splitlines()
    assert box[0].startswith("┌") and box[-1].startswith("└")
    assert [c.strip() for c in box[1].strip("│").split("│")] == ["answer", "s", "l", "n", "f"]
    assert [c.strip() for c in box[2].strip("│").split("│")] == ["integer", "varchar", "integer[]", "varchar", "double"]
    assert box[4] == "│      42 │ x|y     │ [1, 2]    │ NULL    │    2.5 │"


def test_box_cuts_long_tables_and_values() -> None:
    t = Table(["i", "v"], ["BIGINT", "VARCHAR"], [(k, "v" * 100) for k in range(100)])
    lines = render(t, "box", max_rows=10, max_width=20).splitlines()
    assert lines[-1] == "  100 rows (10 shown)"
    assert len(lines) == 4 + 11 + 1 + 1
    assert "·" in lines[9] and lines[4].endswith("│ " + "v" * 19 + "… │")


def test_stdin_script_file_and_dot_commands(tmp_path: Path) -> None:
    script = ".mode csv\nSELECT 1 AS a;\nCREATE TABLE t AS\n  SELECT range AS x FROM range(3);\nSELECT sum(x) AS s FROM t;\n"
    out = shell(stdin=script)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "a\n1\ns\n3\n"
    f = tmp_path / "q.sql"
    f.write_text("SELECT 'semi;colon' AS v; -- a comment; here\nSELECT 2 AS w;\n")
    out = shell("-json", "-f", str(f))
    assert out.returncode == 0, out.stderr
    assert out.stdout == '[{"v":"semi;colon"}]\n[{"w":2}]\n'
    text, _, failed = run_in_process(".tables\n.mode csv\nSELECT function_name FROM duckdb_functions() "
                                     "WHERE function_name = 'ndvi';\n.nosuch\n")
    assert text.splitlines()[-1] == "ndvi" and failed


def test_attach_command_with_and_without_bands(collection: Path) -> None:
    script = (f".attach every {collection}\n.attach b1_only {collection} b1\n.attach none {collection} b7\n.mode csv\n"
              "SELECT count(*) AS n FROM (DESCRIBE every) WHERE column_name LIKE '%_metadata';\n"
              "SELECT column_name FROM (DESCRIBE b1_only) WHERE column_name LIKE '%_metadata';\n")
    text, err, failed = run_in_process(script)
    assert text.splitlines() == ["n", "1", "column_name", "b1_metadata"]
    assert failed and "band 'b7' has no metadata column" in err
    # the command line: --bands NAME=BAND,... goes with --attach NAME=PATH
    q = "SELECT column_name FROM (DESCRIBE coll) WHERE column_name LIKE '%_metadata'"
    out = shell("-csv", "--attach", f"coll={collection}", "--bands", "coll=b1", "-c", q)
    assert out.returncode == 0 and out.stdout.split() == ["column_name", "b1_metadata"], out.stderr
    out = shell("--attach", f"coll={collection}", "--bands", "coll=b7", "-c", q)
    assert out.returncode == 1 and "band 'b7' has no metadata column" in out.stderr
    out = shell("--attach", f"coll={collection}", "--bands", "other=b1", "-c", q)
    assert out.returncode != 0 and "no --attach other=PATH" in out.stderr


def test_errors_set_the_exit_code() -> None:
    out = shell("-c", "SELECT no_such_column")
    assert out.returncode == 1 and "Error:" in out.stderr and "no_such_column" in out.stderr
    text, err, failed = run_in_process("SELECT nope;\nSELECT 3 AS x;\n", "csv")
    assert failed and "nope" in err and text == "x\n3\n"  # scripts go on after an error...
    text, err, failed = run_in_process("SELECT nope;\nSELECT 3 AS x;\n", "csv", bail=True)
    assert failed and text == ""  # ...unless bail is on


class Pty:
    """A child process on a pseudo-terminal, read with a hang guard."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, done: Callable[[str], bool], guard: float = 60.0) -> str:
        end = time.monotonic() + guard
        while not done(self.seen):
            left = end - time.monotonic()
            assert left > 0, f"no expected output; got {self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    break
        return self.seen

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())


def test_interactive_history_and_ctrl_c(collection: Path, make_server: Callable[..., RangeServer],
                                        tmp_path: Path, ctrl_c_raises: None) -> None:
    slow = make_server(corpus_path("rio-tiler/cog.tif").parent)
    coll = rasterduck.build_collection([slow.url("cog.tif")])
    slow_path = coll.to_parquet(tmp_path / "slow.parquet")
    slow.set_latency(60.0)
    history = tmp_path / "history"
    env = {**os.environ, "PYTHONPATH": str(SRC), "RASTERDUCK_HISTORY": str(history), "TERM": "dumb"}
    p = Pty([sys.executable, "-m", "rasterduck.cli", "sql", "--attach", f"slow={slow_path}"], env)
    try:
        p.expect(lambda s: "D " in s)
        p.send("SELECT 6 * 7\n")
        p.send("  AS answer;\n")
        p.expect(lambda s: "42" in s)
        aoi = aois_for(corpus_path("rio-tiler/cog.tif"))[0]
        p.send(f"SELECT load_bands(r, '{aoi.wkt}', ['b1']) FROM slow r;\n")
        while slow.in_flight == 0:  # the tile request is on the wire
            p.expect(lambda s: slow.in_flight > 0, guard=60.0)
        os.kill(p.proc.pid, signal.SIGINT)
        p.expect(lambda s: "Interrupted" in s, guard=30.0)  # well before the 60 s response
        p.send("SELECT 'still' || ' here' AS s;\n")
        p.expect(lambda s: "still here" in s)
        p.send(".quit\n")
        assert p.proc.wait(timeout=30) == 0
    finally:
        if p.proc.poll() is None:
            p.proc.kill()
        os.close(p.master)
        slow.set_latency(0.0)
    lines = history.read_text().splitlines()
    assert "SELECT 6 * 7" in lines and "  AS answer;" in lines
