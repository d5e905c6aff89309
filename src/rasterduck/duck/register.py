"""register / connect / attach: make rasterduck's functions and macros available on a DuckDB database.

Functions (all Arrow UDFs; `record` is a collection row, `r` in `FROM collection r`; AOIs are GEOMETRY,
WKB BLOB or WKT text in EPSG:4326 unless a trailing `geom_crs` argument says otherwise):

    load_bands(record, geom, bands[, geom_crs])       -> STRUCT(bands, height, width, transform, crs,
                                                         dtype, nodata, data T[][], valid BOOLEAN[])
    load_bands_safe(record, geom, bands[, geom_crs])  -> the same STRUCT plus `error VARCHAR`: a failing
                                                         row gives NULL fields and the error text
    load_bands_u8 | _i8 | _u16 | _i16 | _u32 | _i32 | _u64 | _i64 | _f32 | _f64   fixed pixel types
    load_bands_raw(record, geom, bands[, geom_crs])   -> the same STRUCT with `data BLOB[]` (each band's
                                                         little-endian bytes in `dtype`) and `valid BLOB`
                                                         (a byte per pixel); load_bands_raw_safe adds `error`
    zonal_stats(record, geom, band[, geom_crs])       -> STRUCT(count, valid_count, min, max, mean, std, sum)
    pixel_values(record, point, bands[, geom_crs])    -> DOUBLE[] (NULL where nodata)
    raster_intersects(record, geom[, geom_crs])       -> BOOLEAN (footprint test)
    read_cog_metadata(href[, band_index])             -> the `{band}_metadata` struct
    read_cog_crs(href)                                -> 'EPSG:n' (or WKT)
    RS_Intersects, RS_Value, RS_ZonalStats, RS_ZonalStatsAll, RS_BandAsArray, RS_Width, RS_Height,
    RS_NumBands, RS_SRID                              Apache Sedona names and argument orders
    rasterduck_set('pixel_budget', '256MB')           -> change a setting from SQL

The pixel type T of `load_bands` follows the attached collections (see types.py); the SQL macros of
`rasterduck/sql/*.sql` are created in the database's main schema (TEMP when the database is read-only),
so the Quack server's per-query connections see them too.
"""

from __future__ import annotations

import importlib.resources
import re
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..core.bands import candidates
from ..core.metadata import METADATA_TYPE
from ..core.read import DEFAULT_PIXEL_BUDGET
from ..errors import CollectionError, RasterduckError
from . import functions as F
from .interrupt import cancel_on_interrupt, install_sigint_handler
from .state import STATE_FUNCTION, AttachedCollection, LocalAccess, State, state_of
from .types import (
    PIXEL_TYPES,
    SEDONA_STATS_TYPE,
    ZONAL_TYPE,
    arrow_to_duck,
    pixel_dtype,
    raw_result_type,
    result_type,
)
from .worker import on_python_thread

try:  # duckdb >= 1.1
    from duckdb.func import ARROW as _ARROW
except ImportError:  # pragma: no cover
    _ARROW = "arrow"  # type: ignore[assignment]

_KNOWN: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, State] = weakref.WeakKeyDictionary()
_UNSET: Any = object()


def _create(con: duckdb.DuckDBPyConnection, name: str, fn: Callable[..., Any], returns: str) -> None:
    con.create_function(name, on_python_thread(fn), None, returns, type=_ARROW, null_handling="special")  # type: ignore[arg-type,call-overload]


def _functions(state: State) -> list[tuple[str, Callable[..., Any], str]]:
    meta = arrow_to_duck(METADATA_TYPE)
    out: list[tuple[str, Callable[..., Any], str]] = []
    for dtype, (_duck, suffix) in PIXEL_TYPES.items():
        out.append((f"load_bands_{suffix}", F.make_load_bands(state, dtype, safe=False), result_type(dtype)))
    out += [
        ("load_bands_raw", F.make_load_bands_raw(state, safe=False), raw_result_type()),
        ("load_bands_raw_safe", F.make_load_bands_raw(state, safe=True), raw_result_type(safe=True)),
        ("zonal_stats", F.make_zonal_stats(state), ZONAL_TYPE),
        ("pixel_values", F.make_pixel_values(state), "DOUBLE[]"),
        ("raster_intersects", F.make_raster_intersects(state), "BOOLEAN"),
        ("read_cog_metadata", F.make_read_cog_metadata(state), meta),
        ("read_cog_crs", F.make_read_cog_crs(state), "VARCHAR"),
        ("RS_Intersects", F.make_raster_intersects(state), "BOOLEAN"),
        ("RS_Value", F.make_rs_value(state), "DOUBLE"),
        ("RS_ZonalStats", F.make_rs_zonal_stats(state), "DOUBLE"),
        ("RS_ZonalStatsAll", F.make_rs_zonal_stats_all(state), SEDONA_STATS_TYPE),
        ("RS_BandAsArray", F.make_rs_band_as_array(state), "DOUBLE[]"),
    ]
    out += [(f"RS_{w}", F.make_rs_dimension(state, w), "INTEGER") for w in ("Width", "Height", "NumBands", "SRID")]
    return out


def _register_load_bands(state: State, dtype: str) -> None:
    """(Re)create load_bands and load_bands_safe with pixels of `dtype` on the registering connection."""
    con = state.con
    for name, safe in (("load_bands", False), ("load_bands_safe", True)):
        if state.pixel_dtype != dtype or name in _registered(state):
            try:
                con.remove_function(name)
            except (duckdb.Error, ValueError):
                pass
        _create(con, name, F.make_load_bands(state, dtype, safe=safe), result_type(dtype, safe=safe))
        _registered(state).add(name)
    state.pixel_dtype = dtype


def _registered(state: State) -> set[str]:
    names: set[str] | None = getattr(state, "_names", None)
    if names is None:
        names = set()
        state._names = names  # type: ignore[attr-defined]
    return names


def _parse_size(value: str) -> int | None:
    text = value.strip().lower().replace(" ", "")
    if text in ("none", "null", "unlimited", "off"):
        return None
    m = re.fullmatch(r"([0-9.e+]+)(b|kb|mb|gb|tb|kib|mib|gib|tib)?", text)
    if m is None:
        raise RasterduckError(f"not a size: {value!r} (e.g. '512MB', '2GiB', 'none')")
    unit = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
            "gib": 2**30, "tib": 2**40}[m.group(2) or "b"]
    return int(float(m.group(1)) * unit)


def _setter(state: State) -> Callable[[str, str], str]:
    def rasterduck_set(name: str, value: str) -> str:
        if name == "pixel_budget":
            state.pixel_budget = _parse_size(str(value))
            return f"pixel_budget = {state.pixel_budget}"
        raise RasterduckError(f"unknown rasterduck setting {name!r}; known: pixel_budget")

    return rasterduck_set


def sql_files() -> list[tuple[str, str]]:
    """(name, text) of the SQL macro files shipped in the package, in name order."""
    root = importlib.resources.files("rasterduck") / "sql"
    files = [p for p in root.iterdir() if p.name.endswith(".sql")]
    return [(p.name, p.read_text(encoding="utf-8")) for p in sorted(files, key=lambda p: p.name)]


def run_macros(con: duckdb.DuckDBPyConnection) -> None:
    """Create the SQL macros (persistent in main; TEMP if the database cannot be written)."""
    for name, text in sql_files():
        for stmt in con.extract_statements(text):
            try:
                con.execute(stmt).fetchall()
            except duckdb.Error as exc:
                if "read-only" not in str(exc).lower() and "read only" not in str(exc).lower():
                    raise RasterduckError(f"SQL macro file {name} failed: {exc}") from exc
                temp = re.sub(r"(?i)\bcreate\s+or\s+replace\s+macro\b", "CREATE OR REPLACE TEMP MACRO", stmt.query,
                              count=1)
                con.execute(temp).fetchall()


def register(
    con: duckdb.DuckDBPyConnection,
    *,
    allow_local: LocalAccess = False,
    pixel_budget: int | None = _UNSET,
    backend: Any = None,
    dtype: str | None = None,
    macros: bool = True,
    handle_sigint: bool = True,
    fresh: bool = False,
) -> State:
    """Register every rasterduck function and macro on `con`'s database; returns the shared state.

    `allow_local`: local paths reads may open (False: none; True: any; folders: under those).
    `pixel_budget`: bytes of pixels one UDF call may materialise (None: unlimited).
    `dtype`: pin load_bands' pixel type instead of following attached collections.
    `handle_sigint`: chain a SIGINT handler so Ctrl-C also cancels reads in flight (main thread only).
    Calling it again on the same database returns the existing state (widening allow_local).
    `fresh`: the caller just opened `con` (nothing can be registered yet: skip the catalog lookup).
    With duckdb >= 2, `con.interrupt()` then also cancels the reads in flight (see duck/interrupt.py).
    """
    existing = _KNOWN.get(con) or (None if fresh else state_of(con))
    if existing is not None:
        existing.allow(allow_local)
        if pixel_budget is not _UNSET:
            existing.pixel_budget = pixel_budget
        _KNOWN[con] = existing
        cancel_on_interrupt(con, existing.canceller)
        return existing
    state = State(con, pixel_budget=DEFAULT_PIXEL_BUDGET if pixel_budget is _UNSET else pixel_budget,
                  custom_backend=backend)
    state.allow(allow_local)
    if dtype is not None:
        state.pixel_dtype, state.fixed_dtype = pixel_dtype(dtype), True
    sid = state.id
    con.create_function(STATE_FUNCTION, lambda: sid, [], "BIGINT")  # type: ignore[arg-type]
    con.create_function("rasterduck_set", _setter(state), ["VARCHAR", "VARCHAR"], "VARCHAR",  # type: ignore[arg-type]
                        side_effects=True)
    for name, fn, returns in _functions(state):
        _create(con, name, fn, returns)
    _register_load_bands(state, state.pixel_dtype)
    if macros:
        run_macros(con)
    if handle_sigint:
        install_sigint_handler()
    _KNOWN[con] = state
    cancel_on_interrupt(con, state.canceller)  # duckdb >= 2: con.interrupt() also cancels reads in flight
    return state


def connect(
    database: str | Path | None = None,
    *,
    read_only: bool = False,
    allow_local: LocalAccess = False,
    pixel_budget: int | None = _UNSET,
    backend: Any = None,
    **config: Any,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory by default) with rasterduck registered; `config` goes to DuckDB."""
    con = duckdb.connect(str(database) if database is not None else ":memory:", read_only=read_only,
                         config=config or {})
    register(con, allow_local=allow_local, pixel_budget=pixel_budget, backend=backend,
             fresh=database is None or str(database) == ":memory:")
    return con


def _quote_ident(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"invalid table name {name!r}")
    return '"' + name.replace('"', '""') + '"'


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _metadata_columns(schema: pa.Schema) -> list[str]:
    """The `{band}_metadata` struct columns of a collection schema."""
    return [n for n in schema.names if n.endswith("_metadata") and pa.types.is_struct(schema.field(n).type)]


def _unread_band_columns(schema: pa.Schema, bands: Sequence[str], data_source: str, where: str) -> list[str]:
    """The `{band}_metadata` columns no band of `bands` uses (aliases count, as in load_bands); a band with
    no such column raises, naming the bands there are."""
    meta = _metadata_columns(schema)
    keep: set[str] = set()
    for band in bands:
        found = [f"{k}_metadata" for k in candidates(band, data_source) if f"{k}_metadata" in meta]
        if not found:
            have = sorted(n[: -len("_metadata")] for n in meta)
            raise CollectionError(f"band {band!r} has no metadata column in {where} (bands: {have})")
        keep.update(found)
    return [n for n in meta if n not in keep]


def _band_dtypes_arrow(table: pa.Table) -> set[str]:
    out: set[str] = set()
    for col in _metadata_columns(table.schema):
        vals = pc.unique(pc.struct_field(table[col], "dtype")).to_pylist()
        out |= {str(v) for v in vals if v}
    return out


def _band_dtypes_files(files: Sequence[Path], first: pq.ParquetFile, first_schema: pa.Schema,
                       skip: Sequence[str] = ()) -> set[str] | None:
    """Band dtypes from the Parquet files' `{band}_metadata.dtype` leaves (a few KB read), columns in `skip`
    left out; None when a file cannot be read that way (then the view is asked). `first`: files[0], already
    open, and its Arrow schema (`schema_arrow` converts the whole nested schema on every access: ~0.3 ms)."""
    out: set[str] = set()
    try:
        for f in files:
            pf = first if f == files[0] else pq.ParquetFile(f)
            schema = first_schema if pf is first else pf.schema_arrow
            cols = [n for n in _metadata_columns(schema)
                    if n not in skip and schema.field(n).type.get_field_index("dtype") >= 0]
            if cols:
                out |= _band_dtypes_arrow(pf.read(columns=[f"{c}.dtype" for c in cols]))
    except (OSError, pa.ArrowException):
        return None
    return out


def _band_dtypes_sql(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    cols = [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]
    parts = [f'SELECT DISTINCT "{c}".dtype AS d FROM {view}' for c in cols if c.endswith("_metadata")]
    if not parts:
        return set()
    rows = con.execute(" UNION ".join(parts)).fetchall()
    return {str(r[0]) for r in rows if r[0]}


def _parquet_source(path: Path) -> tuple[str, Path, list[Path]]:
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise CollectionError(f"no Parquet files under {path}")
        glob = str(path / "**" / "*.parquet")
        return f"read_parquet({_sql_str(glob)}, hive_partitioning = true, union_by_name = true)", path, files
    if not path.exists():
        raise FileNotFoundError(f"no collection at {path}")
    return f"read_parquet({_sql_str(str(path))})", path.parent, [path]


def _local_href_folders(table: pa.Table) -> list[Path]:
    from ..io.policy import local_path, url_scheme

    folders: set[Path] = set()
    if "assets" not in table.column_names:
        return []
    for row in table["assets"].to_pylist():
        for v in (row or {}).values():
            href = (v or {}).get("href")
            if isinstance(href, str) and url_scheme(href) in ("", "file"):
                folders.add(local_path(href).expanduser().resolve().parent)
    return sorted(folders)


def _has_relative_hrefs(pf: pq.ParquetFile, schema: pa.Schema, folder: Path) -> bool:
    """Like open_collection: hrefs are relative to the collection when the first one names a file beside it."""
    from ..io.policy import url_scheme

    if "assets" not in schema.names:
        return False
    if pf.metadata.num_row_groups == 0:  # row groups, not pq.read_table: that imports pandas (~0.3 s)
        return False
    for row in pf.read_row_group(0, columns=["assets"])["assets"].to_pylist():
        for v in (row or {}).values():
            href = (v or {}).get("href")
            if isinstance(href, str) and href:
                return url_scheme(href) == "" and not Path(href).is_absolute() and (folder / href).is_file()
    return False


def _resolved_assets_sql(assets_type: pa.StructType, folder: Path) -> str:
    """SQL rebuilding the `assets` struct with relative local hrefs prefixed by `folder`."""
    base = _sql_str(str(folder).rstrip("/") + "/")
    parts = []
    for i in range(assets_type.num_fields):
        key = assets_type.field(i).name
        ref = f"assets.{_quote_ident(key)}"
        inner_t = assets_type.field(i).type
        fields = []
        for j in range(inner_t.num_fields):
            f = inner_t.field(j).name
            col = f"{ref}.{_quote_ident(f)}"
            if f == "href":
                col = (f"CASE WHEN {col} IS NULL OR contains({col}, '://') OR starts_with({col}, '/') "
                       f"THEN {col} ELSE {base} || {col} END")
            fields.append(f"{_quote_ident(f)} := {col}")
        parts.append(f"{_quote_ident(key)} := CASE WHEN {ref} IS NULL THEN NULL ELSE struct_pack({', '.join(fields)}) END")
    return f"struct_pack({', '.join(parts)})"


def attach(
    con: duckdb.DuckDBPyConnection,
    name: str,
    collection: Any,
    *,
    allow_local: bool | str | Path | Sequence[str | Path] | None = None,
    bands: Sequence[str] | None = None,
) -> str:
    """Expose a collection (Parquet file, folder of Parquet, or Collection) as view/table `name`.

    A path becomes a view over its Parquet files (small row groups let DuckDB call the UDFs from
    several threads); a Collection object is copied into a table. The collection's band dtypes join
    the pixel-type rule, so `load_bands` is re-registered with the promoted type when it changes.
    `bands`: keep only these bands' `{band}_metadata` columns (aliases resolved as load_bands does).
    DuckDB hands `load_bands` the whole row, so every band's metadata costs on every call; and only
    these bands' dtypes join the pixel-type rule. A band without metadata raises CollectionError.
    Local hrefs stay denied unless `allow_local` is True (the folder holding the collection -- for a
    Collection object, the folders its local hrefs point into) or names allowed root folders.
    Returns the quoted name.
    """
    from ..core.collection import Collection

    state = register(con)
    ident = _quote_ident(name)
    data_source = ""
    folder: Path | None = None
    if isinstance(bands, str):
        raise TypeError("attach(bands=...) wants a list of band codes, not one string")
    if bands is not None and not bands:
        raise ValueError("attach(bands=...) needs at least one band code (None keeps every band)")
    if isinstance(collection, Collection):
        table = collection.to_arrow()
        if bands is not None:
            table = table.drop_columns(_unread_band_columns(table.schema, bands, collection.data_source,
                                                            f"collection {name!r}"))
        tmp = f"__rasterduck_attach_{state.id}"
        con.register(tmp, table)
        try:
            con.execute(f"CREATE OR REPLACE TABLE {ident} AS SELECT * FROM {_quote_ident(tmp)}").fetchall()
        finally:
            con.unregister(tmp)
        dtypes = _band_dtypes_arrow(table)
        data_source = collection.data_source
        local_roots: list[Path] = _local_href_folders(table) if allow_local is True else []
    else:
        from ..core.schema import validate

        path = Path(collection).expanduser()
        source, folder, files = _parquet_source(path)
        first = pq.ParquetFile(files[0])  # opened once: each open parses the whole nested schema (~1.5 ms)
        schema = first.schema_arrow
        validate(schema)  # clear CollectionError before anything reads the columns
        meta = schema.metadata or {}
        data_source = meta.get(b"data_source", b"").decode()
        if data_source == "unknown":
            data_source = ""
        unread = [] if bands is None else _unread_band_columns(schema, bands, data_source, str(path))
        select = "*"
        if unread:
            select += f" EXCLUDE ({', '.join(_quote_ident(c) for c in unread)})"
        if _has_relative_hrefs(first, schema, folder):
            assets_type = schema.field("assets").type
            select += f" REPLACE ({_resolved_assets_sql(assets_type, folder.resolve())} AS assets)"
        con.execute(f"CREATE OR REPLACE VIEW {ident} AS SELECT {select} FROM {source}").fetchall()
        found = _band_dtypes_files(files, first, schema, unread) if len(files) <= 64 else None  # cheaper than SQL
        dtypes = found if found is not None else _band_dtypes_sql(con, ident)
        local_roots = [folder.resolve()] if allow_local is True else []
    if allow_local not in (None, False, True):
        state.allow(allow_local)  # type: ignore[arg-type]
    elif local_roots:
        state.allow(local_roots)
    state.collections[name] = AttachedCollection(name, {pixel_dtype(d) for d in dtypes}, data_source, folder)
    retype(state)
    _KNOWN[con] = state
    return ident


def retype(state: State) -> str:
    """Re-register load_bands / load_bands_safe when the pixel-type rule now gives another type."""
    want = state.wanted_dtype()
    if want != state.pixel_dtype:
        _register_load_bands(state, want)
    return want


def known_state(con: duckdb.DuckDBPyConnection) -> State | None:
    """The state of a connection registered or attached through this module (no query is run)."""
    return _KNOWN.get(con)
