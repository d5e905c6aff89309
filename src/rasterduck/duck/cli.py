"""The `rasterduck sql` and `rasterduck serve` subcommands (hooked into rasterduck.cli)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

_MODE_FLAGS = ("box", "csv", "json", "jsonlines", "markdown", "line")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("database", nargs="?", default=None, help="DuckDB database file (default: in memory)")
    p.add_argument("--attach", action="append", default=[], metavar="NAME=PATH",
                   help="attach a collection (Parquet file or folder) as view NAME; repeatable")
    p.add_argument("--bands", action="append", default=[], metavar="NAME=BAND,...",
                   help="attach only these bands' metadata to view NAME (load_bands gets smaller rows); repeatable")
    p.add_argument("--allow-local", action="store_true",
                   help="with --attach: let reads open files in the attached collections' folders; "
                        "without: any local path (default: remote URLs only)")
    p.add_argument("--pixel-budget", default=None, metavar="SIZE",
                   help="bytes of pixels one UDF call may hold, e.g. 512MB (default 512 MiB; 'none')")
    p.add_argument("-readonly", "--readonly", action="store_true", help="open the database read-only")


def add_subcommands(sub: Any) -> None:
    """Add `sql` and `serve` to the `rasterduck` argument parser."""
    s = sub.add_parser("sql", help="a DuckDB shell with rasterduck's functions",
                       description="DuckDB-like shell: -c/-f/stdin scripts, or interactive with history.")
    _common(s)
    s.add_argument("-c", dest="commands", action="append", default=[], metavar="SQL",
                   help="run SQL (or a .command) and exit; repeatable")
    s.add_argument("-f", dest="files", action="append", default=[], metavar="FILE", help="run a SQL file and exit")
    for m in _MODE_FLAGS:
        s.add_argument(f"-{m}", dest="mode", action="store_const", const=m, help=f"{m} output")
    s.add_argument("--mode", dest="mode", choices=_MODE_FLAGS, help="output mode (default box)")
    s.add_argument("-bail", "--bail", action="store_true", help="stop at the first error")
    s.set_defaults(func=cmd_sql, mode=None)

    v = sub.add_parser("serve", help="serve a DuckDB database with rasterduck over DuckDB's Quack protocol",
                       description="Serve the database so the stock `duckdb` CLI can run "
                                   "FROM quack_query('quack:localhost:PORT', 'SELECT load_bands(...) ...', "
                                   "token := '...', disable_ssl := true). Loopback and a token only.")
    _common(v)
    v.add_argument("--host", default="127.0.0.1", help="loopback address (127.0.0.1, localhost or ::1)")
    v.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    v.add_argument("--token", default=os.environ.get("RASTERDUCK_QUACK_TOKEN"),
                   help="auth token, at least 4 characters (default: $RASTERDUCK_QUACK_TOKEN, else random)")
    v.set_defaults(func=cmd_serve)


def _open(args: argparse.Namespace) -> Any:
    from .register import _parse_size, attach, connect

    budget: Any = {}
    if args.pixel_budget is not None:
        budget = {"pixel_budget": _parse_size(args.pixel_budget)}
    attaches = []
    for spec in args.attach:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--attach wants NAME=PATH, got {spec!r}")
        attaches.append((name, path))
    bands: dict[str, list[str]] = {}
    for spec in args.bands:
        name, sep, codes = spec.partition("=")
        listed = [c.strip() for c in codes.split(",") if c.strip()]
        if not sep or not name or not listed:
            raise SystemExit(f"--bands wants NAME=BAND[,BAND...], got {spec!r}")
        if name not in {n for n, _ in attaches}:
            raise SystemExit(f"--bands {spec!r}: no --attach {name}=PATH")
        bands[name] = listed
    allow_any = args.allow_local and not attaches
    con = connect(args.database, read_only=args.readonly, allow_local=allow_any, **budget)
    for name, path in attaches:
        attach(con, name, path, allow_local=True if args.allow_local else None, bands=bands.get(name))
    return con


def cmd_sql(args: argparse.Namespace) -> int:
    """rasterduck sql [DB] [-c SQL] [-f FILE] [-json|-csv|-markdown|-box]"""
    from ..errors import RasterduckError
    from .shell import main_sql

    try:
        con = _open(args)
    except (RasterduckError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    try:
        return main_sql(con, commands=args.commands, files=args.files, mode=args.mode or "box", bail=args.bail,
                        allow_local=args.allow_local)
    finally:
        con.close()


def cmd_serve(args: argparse.Namespace) -> int:
    """rasterduck serve [DB] [--port N] [--token T]: serve until Ctrl-C or SIGTERM."""
    from ..errors import RasterduckError
    from .interrupt import PROCESS
    from .quack import QuackUnavailableError, serve

    try:
        con = _open(args)
        srv = serve(con, host=args.host, port=args.port, token=args.token)
    except (RasterduckError, QuackUnavailableError, ValueError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_term(signum: int, frame: Any) -> None:
        PROCESS.cancel()
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    print(f"rasterduck: serving {args.database or 'an in-memory database'} at {srv.uri} ({srv.url})", flush=True)
    print(f"token: {srv.token}", flush=True)
    print("query it from the DuckDB CLI (1.5.5: LOAD httpfs and quack first):", flush=True)
    print(f"  FROM {srv.remote_call('SELECT 42')};", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        PROCESS.cancel()
    finally:
        srv.stop()
        con.close()
    print("rasterduck: stopped", flush=True)
    return 0
