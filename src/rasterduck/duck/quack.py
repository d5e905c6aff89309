"""Serve a DuckDB connection over the Quack remote protocol, so the stock DuckDB CLI can call our UDFs.

Facts this module relies on (DuckDB 1.5.5, measured; see notes/duckdb-facts.md):
- extensions ship offline in PyPI packages ``duckdb-extension-<name>`` as
  ``<package>/extensions/v<duckdb version>/<name>.duckdb_extension``; they are signed, so a plain
  ``LOAD '<path>'`` works without ``allow_unsigned_extensions``;
- a Quack server needs ``httpfs`` loaded besides ``quack`` (its crypto module), and so does the client;
- remote queries run on fresh server-side connections of the same database, which see the Python UDFs
  registered on any connection of that database (they live in the database catalog), but not temp
  tables or variables; each client request runs on its own server thread, clients run concurrently;
- ``quack_serve`` refuses port 0 and non-local hosts, and ``quack_stop`` needs the exact URI it was given.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import secrets
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb

from rasterduck.errors import RasterduckError

__all__ = [
    "QuackServer",
    "QuackUnavailableError",
    "cli_path",
    "extension_load_sql",
    "extension_path",
    "load_extension",
    "serve",
]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_BIND_ATTEMPTS = 8
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:+/=-]{4,}$")


class QuackUnavailableError(RasterduckError, RuntimeError):
    """A DuckDB extension, the CLI binary or the Quack server could not be found or started."""


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def extension_path(name: str) -> Path:
    """Path of ``<name>.duckdb_extension`` from the installed ``duckdb-extension-<name>`` package.

    Raises QuackUnavailableError when the package is missing or built for another DuckDB version.
    """
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"not a DuckDB extension name: {name!r}")
    package = f"duckdb_extension_{name}"
    version = duckdb.__version__
    root = _package_dir(package)
    if root is None:
        raise QuackUnavailableError(
            f"DuckDB extension {name!r} is not installed as a Python package; "
            f"pip install duckdb-extension-{name}=={version}"
        )
    path = root / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
    if path.is_file():
        return path
    found = sorted(p.parent.name for p in root.glob(f"extensions/v*/{name}.duckdb_extension"))
    try:
        dist = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        dist = "unknown"
    raise QuackUnavailableError(
        f"duckdb-extension-{name} {dist} ships {', '.join(found) or 'no extension file'} "
        f"but duckdb is {version}; pip install duckdb-extension-{name}=={version} (package at {root})"
    )


def extension_load_sql(name: str) -> str:
    """The ``LOAD '<file>';`` statement for the packaged extension (usable in the CLI of the same version)."""
    return f"LOAD {_sql_str(str(extension_path(name)))};"


def _loaded(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute("SELECT loaded FROM duckdb_extensions() WHERE extension_name = ?", [name]).fetchall()
    return bool(rows and rows[0][0])


def load_extension(con: duckdb.DuckDBPyConnection, name: str, *, allow_install: bool = False) -> str:
    """Load extension ``name`` into ``con``: already there, ``LOAD name``, the packaged file, else INSTALL.

    ``INSTALL`` downloads from the DuckDB repository, so it is tried only with ``allow_install=True``.
    Returns how it was loaded: ``"loaded"``, ``"installed"``, the file path, or ``"downloaded"``.
    """
    if _loaded(con, name):
        return "loaded"
    errors: list[str] = []
    try:
        con.execute(f"LOAD {name}").fetchall()
        return "installed"
    except duckdb.Error as exc:
        errors.append(f"LOAD {name}: {str(exc).splitlines()[0]}")
    try:
        path = extension_path(name)
    except QuackUnavailableError as exc:
        errors.append(str(exc))
    else:
        con.execute(f"LOAD {_sql_str(str(path))}").fetchall()
        return str(path)
    if allow_install:
        try:
            con.execute(f"INSTALL {name}").fetchall()
            con.execute(f"LOAD {name}").fetchall()
            return "downloaded"
        except duckdb.Error as exc:
            errors.append(f"INSTALL {name}: {str(exc).splitlines()[0]}")
    raise QuackUnavailableError(f"cannot load DuckDB extension {name!r}: " + "; ".join(errors))


def cli_path() -> Path:
    """The real ``duckdb`` executable shipped inside the ``duckdb-cli`` package (not its Python wrapper)."""
    root = _package_dir("duckdb_cli")
    if root is None:
        raise QuackUnavailableError(
            f"the DuckDB CLI is not installed; pip install duckdb-cli=={duckdb.__version__}"
        )
    for exe in (root / "duckdb", root / "duckdb.exe"):
        if exe.is_file():
            return exe
    raise QuackUnavailableError(f"duckdb-cli is installed without its binary (looked in {root})")


def _uri(host: str, port: int) -> str:
    return f"quack:[{host}]:{port}" if ":" in host else f"quack:{host}:{port}"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class QuackServer:
    """A running Quack server on one DuckDB database; stop it with ``stop()`` or a ``with`` block."""

    def __init__(
        self, control: duckdb.DuckDBPyConnection, host: str, port: int, token: str, url: str
    ) -> None:
        self._control = control
        self.host = host
        self.port = port
        self.token = token
        self.url = url
        self.uri = _uri(host, port)
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether stop() has not been called yet."""
        return not self._stopped.is_set()

    def remote_call(self, query: str) -> str:
        """The ``quack_query(...)`` table-function call that runs ``query`` on this server."""
        return (
            f"quack_query({_sql_str(self.uri)}, {_sql_str(query)}, "
            f"token := {_sql_str(self.token)}, disable_ssl := true)"
        )

    def client_sql(self, query: str, *, load_extensions: bool = True) -> str:
        """SQL for a DuckDB client (e.g. the CLI) that loads quack, runs ``query`` here and shows its rows."""
        call = f"FROM {self.remote_call(query)};"
        if not load_extensions:
            return call
        return f"{extension_load_sql('httpfs')} {extension_load_sql('quack')} {call}"

    def stop(self) -> None:
        """Stop listening (idempotent); returns at once, a remote query already running still completes."""
        with self._lock:
            if self._stopped.is_set():
                return
            try:
                self._control.execute("CALL quack_stop(?)", [self.uri]).fetchall()
            finally:
                self._stopped.set()
                self._control.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() is called (from another thread) or ``timeout`` passes; True if stopped."""
        if timeout is not None:
            return self._stopped.wait(timeout)
        while not self._stopped.wait(0.5):  # short waits keep Ctrl-C responsive in the main thread
            pass
        return True

    def __enter__(self) -> QuackServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"QuackServer({self.uri!r}, {state})"


def serve(
    con: duckdb.DuckDBPyConnection,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
) -> QuackServer:
    """Start a Quack server on ``con``'s database, listening on a loopback ``host``.

    Port 0 picks a free port; a random token is generated when none is given. Python UDFs registered on
    any connection of this database are callable by the remote clients.
    """
    if host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"Quack serves loopback hosts only ({', '.join(sorted(LOOPBACK_HOSTS))}), not {host!r}"
        )
    if not 0 <= port < 65536:
        raise ValueError(f"invalid port {port}")
    if token is None:
        token = secrets.token_hex(16)
    elif not _TOKEN_RE.fullmatch(token):
        raise ValueError("a Quack token needs at least 4 characters from [A-Za-z0-9_.:+/=-]")
    control = con.cursor()
    try:
        load_extension(control, "httpfs")  # the server needs its crypto module, not only quack
        load_extension(control, "quack")
        last: Exception | None = None
        for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
            chosen = port or _free_port(host)
            try:
                rows: list[Any] = control.execute(
                    "CALL quack_serve(?, token := ?, disable_ssl := true)", [_uri(host, chosen), token]
                ).fetchall()
            except duckdb.IOException as exc:  # lost a race for the port, or it is taken
                last = exc
                continue
            except duckdb.Error as exc:  # e.g. this database already serves that URI
                raise QuackUnavailableError(f"could not start a Quack server: {exc}") from exc
            url = str(rows[0][1]) if rows and len(rows[0]) > 1 else f"http://{host}:{chosen}"
            return QuackServer(control, host, chosen, token, url)
        raise QuackUnavailableError(f"could not start a Quack server on {host}:{port or 'any port'}: {last}")
    except BaseException:
        control.close()
        raise
