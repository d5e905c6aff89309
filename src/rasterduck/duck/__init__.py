"""DuckDB surface: `connect`, `register`, `attach`, `to_numpy`, `interrupt`, the shell and the Quack server.

    import rasterduck
    con = rasterduck.connect()
    rasterduck.attach(con, "scenes", "scenes.parquet")
    rows = con.sql('''
        SELECT aoi.id, r.id, load_bands(r, aoi.geom, ['B04', 'B08']) AS px
        FROM scenes r JOIN aoi ON raster_intersects(r, aoi.geom)''').fetchall()
    arr = rasterduck.to_numpy(rows[0][2])   # (bands, height, width) masked array

See register.py for the function list and types.py for the pixel-type rule.
"""

from __future__ import annotations

import duckdb

from .arrays import to_numpy
from .interrupt import PROCESS
from .register import attach, connect, known_state, register, retype, run_macros, sql_files
from .state import QueryInterrupted, State, state_of


def interrupt(con: duckdb.DuckDBPyConnection) -> None:
    """Interrupt `con`'s running query and cancel the reads its UDF calls have in flight.

    With duckdb >= 2, `con.interrupt()` on a connection passed to connect/register/attach does the
    same; with duckdb 1.x, where DuckDB acts on `con.interrupt()` only between UDF calls, use this.
    A connection rasterduck does not know cancels every rasterduck read in the process.
    """
    state = known_state(con)
    if state is not None:
        state.canceller.cancel()
    else:
        PROCESS.cancel()
    con.interrupt()


__all__ = [
    "QueryInterrupted",
    "State",
    "attach",
    "connect",
    "interrupt",
    "register",
    "retype",
    "run_macros",
    "sql_files",
    "state_of",
    "to_numpy",
]
