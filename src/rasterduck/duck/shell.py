"""`rasterduck sql`: a DuckDB-like shell with rasterduck's functions loaded.

Runs `-c` commands, `-f` files and scripts piped on stdin, or an interactive session with readline
editing and history (~/.rasterduck_history, or $RASTERDUCK_HISTORY). SQL statements end with `;`;
lines starting with `.` are shell commands (`.help` lists them). Ctrl-C during a query interrupts it
and cancels the reads in flight; at the prompt it clears the line; Ctrl-D leaves.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import duckdb

from ..errors import RasterduckError
from .format import MODES, Table, render
from .interrupt import install_sigint_handler

_QUIET = {"CREATE", "DROP", "ALTER", "SET", "VARIABLE_SET", "ATTACH", "DETACH", "TRANSACTION", "LOAD",
          "PREPARE", "DEALLOCATE", "EXPORT", "VACUUM", "CREATE_FUNC"}
HELP = """\
.attach NAME PATH [BAND ...]  attach a collection (Parquet file or folder) as view NAME;
                         with BANDs, only their metadata (load_bands gets smaller rows)
.bail on|off             stop at the first error (scripts)
.exit / .quit            leave the shell
.help [functions]        this text, or the SQL function reference
.maxrows N               rows shown in box mode (0: all)
.maxwidth N              characters per box cell
.mode MODE               output mode: box, csv, json, jsonlines, markdown, line
.read FILE               run a SQL script
.tables                  list tables and views
.timer on|off            print the time each statement takes"""


def _to_table(cur: duckdb.DuckDBPyConnection) -> Table | None:
    desc = cur.description
    rows = cur.fetchall()
    if not desc:
        return None
    return Table([d[0] for d in desc], [str(d[1]) for d in desc], rows)


class Shell:
    """Executes SQL and dot commands on one connection and prints results."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, mode: str = "box", out: IO[str] | None = None,
                 err: IO[str] | None = None, bail: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.con = con
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bail = bail
        self.timer = False
        self.max_rows = 40
        self.max_width = 60
        self.failed = False
        self.done = False
        self.allow_local = False  # .attach may open the collection's folder (--allow-local)

    # ---- output --------------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        if text:
            self.out.write(text + "\n")
            self.out.flush()

    def error(self, message: str) -> None:
        """Report an error (and remember it for the exit code)."""
        self.failed = True
        self.err.write(f"Error: {message}\n")
        self.err.flush()

    # ---- SQL -----------------------------------------------------------------------------------
    def run_sql(self, sql: str) -> bool:
        """Run every statement of `sql`, printing results; False after the first failing statement."""
        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as exc:
            self.error(str(exc))
            return False
        for st in statements:
            t0 = time.perf_counter()
            try:
                cur = self.con.execute(st)
                table = _to_table(cur)
            except KeyboardInterrupt:
                self.error("Interrupted")
                return False
            except Exception as exc:  # duckdb.Error, RuntimeError('Query interrupted') in 2.x, ours
                self.error("Interrupted" if _interrupted(exc) else str(exc))
                return False
            kind = getattr(st.type, "name", str(st.type)).upper()
            if table is not None and kind not in _QUIET:
                self._print(render(table, self.mode, max_rows=self.max_rows, max_width=self.max_width))
            if self.timer:
                self.err.write(f"Run Time: {time.perf_counter() - t0:.3f} s\n")
        return True

    # ---- dot commands --------------------------------------------------------------------------
    def dot(self, line: str) -> bool:
        """Run one `.command`; False when it failed."""
        parts = line.strip().split()
        cmd, args = parts[0].lower(), parts[1:]
        if cmd in (".quit", ".exit"):
            self.done = True
            return True
        if cmd == ".help":
            if args[:1] == ["functions"]:
                from .reference import help_text

                self._print(help_text())
            else:
                self._print(HELP)
            return True
        if cmd == ".mode" and len(args) == 1:
            if args[0] not in MODES:
                self.error(f"unknown mode {args[0]!r}; expected one of {', '.join(MODES)}")
                return False
            self.mode = args[0]
            return True
        if cmd in (".timer", ".bail") and len(args) == 1 and args[0] in ("on", "off"):
            setattr(self, "timer" if cmd == ".timer" else "bail", args[0] == "on")
            return True
        if cmd in (".maxrows", ".maxwidth") and len(args) == 1 and args[0].isdigit():
            setattr(self, "max_rows" if cmd == ".maxrows" else "max_width", int(args[0]))
            return True
        if cmd == ".tables":
            return self.run_sql("SELECT table_name AS name FROM duckdb_tables() WHERE NOT internal UNION "
                                "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY name;")
        if cmd == ".read" and len(args) == 1:
            try:
                text = Path(args[0]).read_text(encoding="utf-8")
            except OSError as exc:
                self.error(str(exc))
                return False
            return self.run_script(text)
        if cmd == ".attach" and len(args) >= 2:
            from .register import attach

            try:
                attach(self.con, args[0], args[1], allow_local=True if self.allow_local else None,
                       bands=args[2:] or None)
            except (duckdb.Error, RasterduckError, OSError) as exc:
                self.error(str(exc))
                return False
            return True
        self.error(f"unknown or malformed command {line.strip()!r}; try .help")
        return False

    # ---- scripts -------------------------------------------------------------------------------
    def run_script(self, text: str) -> bool:
        """Run a script: `.commands` on their own lines, SQL statements ending with `;`."""
        ok = True
        buf: list[str] = []
        for line in text.splitlines():
            if not buf and line.lstrip().startswith("."):
                ok = self.dot(line) and ok
            else:
                buf.append(line)
                if line.rstrip().endswith(";") and sql_complete("\n".join(buf)):
                    ok = self.run_sql("\n".join(buf)) and ok
                    buf = []
            if self.done or (not ok and self.bail):
                return ok
        rest = "\n".join(buf).strip()
        if rest:
            ok = self.run_sql(rest) and ok
        return ok

    # ---- interactive ---------------------------------------------------------------------------
    def interactive(self, read: Callable[[str], str] = input, history: Path | None = None) -> None:
        """The read-eval-print loop (readline editing and history when available)."""
        rl = _readline(history)
        self._print(f"rasterduck SQL shell (DuckDB {duckdb.__version__}). Enter \".help\" for usage hints.")
        buf: list[str] = []
        try:
            while not self.done:
                try:
                    line = read("D " if not buf else "· ")
                except KeyboardInterrupt:
                    self.out.write("\n")
                    buf = []
                    continue
                except EOFError:
                    self.out.write("\n")
                    break
                if not buf and line.lstrip().startswith("."):
                    self.dot(line)
                    continue
                buf.append(line)
                sql = "\n".join(buf)
                if sql.rstrip().endswith(";") and sql_complete(sql):
                    buf = []
                    self.run_sql(sql)
        finally:
            if rl is not None and history is not None:
                try:
                    rl.write_history_file(str(history))
                except OSError:
                    pass


def _interrupted(exc: BaseException) -> bool:
    """Whether a query failed because it was interrupted (Ctrl-C or interrupt())."""
    from .state import QueryInterrupted

    msg = str(exc)
    return (isinstance(exc, QueryInterrupted) or "KeyboardInterrupt" in msg or "QueryInterrupted" in msg
            or msg.strip() in ("Query interrupted", "INTERRUPT Error: Interrupted!"))


def sql_complete(sql: str) -> bool:
    """Whether `sql` ends outside quotes and comments (so the `;` really ends a statement)."""
    quote: str | None = None
    i = 0
    comment = False
    while i < len(sql):
        c = sql[i]
        if comment:
            if c == "\n":
                comment = False
        elif quote:
            if c == quote:
                quote = None
        elif c in ("'", '"'):
            quote = c
        elif c == "-" and sql[i:i + 2] == "--":
            comment = True
        i += 1
    return quote is None


def _readline(history: Path | None) -> Any:
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        return None
    readline.set_history_length(10000)
    if history is not None and history.exists():
        try:
            readline.read_history_file(str(history))
        except OSError:
            pass
    return readline


def history_path() -> Path:
    """Where the interactive history lives: $RASTERDUCK_HISTORY or ~/.rasterduck_history."""
    env = os.environ.get("RASTERDUCK_HISTORY")
    return Path(env) if env else Path.home() / ".rasterduck_history"


def main_sql(con: duckdb.DuckDBPyConnection, *, commands: list[str], files: list[str], mode: str,
             bail: bool, stdin: IO[str] | None = None, allow_local: bool = False) -> int:
    """Run the shell the way `rasterduck sql` was asked to; returns the exit code."""
    stdin = stdin or sys.stdin
    shell = Shell(con, mode=mode, bail=bail)
    shell.allow_local = allow_local
    install_sigint_handler()
    ran = False
    for path in files:
        ran = True
        if not shell.dot(f".read {path}") and bail:
            return 1
    for cmd in commands:
        ran = True
        ok = shell.dot(cmd) if cmd.lstrip().startswith(".") else shell.run_script(cmd)
        if (not ok and bail) or shell.done:
            break
    if not ran:
        if stdin.isatty():
            shell.interactive(history=history_path())
            return 0  # like the DuckDB CLI: errors in an interactive session do not set the exit code
        else:
            shell.bail = bail
            shell.run_script(stdin.read())
    return 1 if shell.failed else 0
