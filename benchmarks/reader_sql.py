"""Reader: rasterduck via SQL (DuckDB), on the same collection and pairs as the Python reader.

    con = rasterduck.connect(); rasterduck.attach(con, "scenes", <collection.parquet>, bands=[bands])
    SELECT p.aoi_id, r.id, load_bands(r, p.geom, [bands]) FROM scenes r JOIN pairs p ON r.id = p.scene_id

The view carries only the metadata of the bands the scenario reads, as the README advises for SQL
(DuckDB hands load_bands the whole row; the Python reader never touches the other bands either).

With RASTERDUCK_BENCH_SQL_FUNCTION=load_bands_raw (the harness's "rasterduck-sql-raw") the same query
calls load_bands_raw: pixels as BLOBs instead of lists.

With RASTERDUCK_BENCH_SQL_FUNCTION=floor (the harness's "rasterduck-sql-floor") it measures DuckDB's own
share of the SQL read: the same attach and query, but `load_bands` is a UDF that hands back the result a
real run saved beforehand (RASTERDUCK_BENCH_SQL_DUMP=1 writes it beside the spec). What is left is
attaching, scanning and joining, handing each row to Python and taking the result lists back: the part of
the SQL read that no work on our read can remove. The UDF's own lookup time is reported (`extra.lookup_s`).

For read scenarios the whole result is fetched as Arrow the way the README advises for large windows,
`to_arrow_table(batch_size=8)`: DuckDB converts nested LIST columns to Arrow ~2.5x faster in small
batches (S3: 0.08 against 0.20 s), and small windows (S2) take the same ~10 ms either way. For the
stream scenario (S5) the result is consumed batch by batch (`fetch_record_batch`) and only counted, so
peak RSS shows what the engine holds in flight; hashes are kept for the AOIs listed in the spec's
`check_aois` only.
Skips (with the reason) while `rasterduck.duck` has no `connect`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, SkipReader, key, main_guard, peak_rss_mb, pixel_hash

FUNCTION = os.environ.get("RASTERDUCK_BENCH_SQL_FUNCTION", "load_bands")
DUMP = os.environ.get("RASTERDUCK_BENCH_SQL_DUMP") == "1"
FETCH_BATCH = 8  # rows per Arrow batch of the fetched result (the README's advice for large windows)
run = Run({"load_bands_raw": "rasterduck-sql-raw", "floor": "rasterduck-sql-floor"}.get(FUNCTION, "rasterduck-sql"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402

import rasterduck  # noqa: E402

_IMPORT_ERROR: str | None = None
try:
    import rasterduck.duck

    rasterduck.connect  # noqa: B018  (AttributeError while the SQL surface is missing)
    rasterduck.attach  # noqa: B018
except (ImportError, AttributeError) as exc:
    _IMPORT_ERROR = f"rasterduck SQL surface not importable yet ({type(exc).__name__}: {exc})"
import duckdb  # noqa: E402


def _sql_text(value: str) -> str:
    """`value` inside a single-quoted SQL literal."""
    return value.replace("'", "''")


def _contiguous(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One Arrow array from a UDF argument (DuckDB may pass several chunks)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def saved_result_path(spec_path: str) -> Path:
    """Where a real run of the query leaves its result for the floor reader."""
    return Path(spec_path).with_suffix(".sql-result.arrow")


class SavedResult:
    """The floor's UDF: the saved `load_bands` result, found by (record id, AOI bytes) as DuckDB passes them."""

    def __init__(self, spec: dict, spec_path: str) -> None:
        path = saved_result_path(spec_path)
        if not path.exists():
            raise SkipReader(f"no saved SQL result at {path} (the harness writes it before the floor's runs)")
        with ipc.open_file(path) as f:
            table = f.read_all()
        self.px = table.column("px").combine_chunks()
        # the AOIs as DuckDB hands them to a UDF (its Arrow export of the pairs' GEOMETRY column)
        pairs = duckdb.connect().sql(f"SELECT aoi_id, geom FROM read_parquet('{_sql_text(spec['pairs_parquet'])}')")
        wkb_of = dict(zip(*(c.to_pylist() for c in pairs.to_arrow_table().columns), strict=True))
        keys = zip(table.column("scene_id").to_pylist(), table.column("aoi_id").to_pylist(), strict=True)
        self.row = {(sid, wkb_of[aoi]): i for i, (sid, aoi) in enumerate(keys)}
        self.lookup_s = 0.0

    def __call__(self, records: pa.ChunkedArray, geoms: pa.ChunkedArray, _bands: pa.ChunkedArray) -> pa.Array:
        t0 = time.perf_counter()
        ids = _contiguous(records).field("id").to_pylist()
        wkbs = _contiguous(geoms).to_pylist()
        idx = [self.row[k] for k in zip(ids, wkbs, strict=True)]
        run_of_rows = bool(idx) and idx == list(range(idx[0], idx[0] + len(idx)))
        out = self.px.slice(idx[0], len(idx)) if run_of_rows else self.px.take(pa.array(idx, pa.int64()))
        self.lookup_s += time.perf_counter() - t0
        return out


saved = SavedResult(run.spec, run.spec_path) if FUNCTION == "floor" and _IMPORT_ERROR is None else None
if DUMP:  # a failed save must not leave an older run's result for the floor
    saved_result_path(run.spec_path).unlink(missing_ok=True)
run.imported()


def _row_hashes(batch: pa.RecordBatch, keep: set[str] | None) -> dict[str, str]:
    """Hashes of every band array of every non-NULL result row of a batch."""
    out = {}
    aoi_col = batch.column("aoi_id").to_pylist()
    scene_col = batch.column("scene_id").to_pylist()
    px = batch.column("px")
    for i, (aoi_id, sid) in enumerate(zip(aoi_col, scene_col, strict=True)):
        if keep is not None and aoi_id not in keep:
            continue
        if not px[i].is_valid:
            continue
        row = px[i]
        h, w = row["height"].as_py(), row["width"].as_py()
        if not h or not w:
            continue
        names = row["bands"].as_py()
        data = row["data"].values  # per band: a flat list, or (load_bands_raw) a BLOB of little-endian bytes
        dtype = np.dtype(row["dtype"].as_py()).newbyteorder("<")
        for j, band in enumerate(names):
            if pa.types.is_binary(data.type) or pa.types.is_large_binary(data.type):
                flat = np.frombuffer(data[j].as_buffer(), dtype=dtype)
            else:
                flat = data[j].values.to_numpy(zero_copy_only=False)
            out[key(aoi_id, sid, band)] = pixel_hash(np.asarray(flat).reshape(h, w))
    return out


def body() -> dict[str, str]:
    """Run the join query; return hashes."""
    if _IMPORT_ERROR is not None:
        raise SkipReader(_IMPORT_ERROR)
    spec = run.spec
    con = rasterduck.connect()
    function = FUNCTION
    if saved is not None:
        from rasterduck.duck.types import arrow_to_duck

        con.create_function("saved_load_bands", saved, None, arrow_to_duck(saved.px.type),  # type: ignore[arg-type]
                            type="arrow", null_handling="special")
        function = "saved_load_bands"
    run.session_opened()  # opening a database and registering the functions: once per session, reported apart
    rasterduck.attach(con, "scenes", spec["rasterduck_collection"], bands=spec["bands"])
    # the AOI pairs as a user keeps them: a Parquet file (written by the harness, run.py write_pairs)
    con.execute(f"CREATE TEMP VIEW pairs AS FROM read_parquet('{_sql_text(spec['pairs_parquet'])}')")
    n_pairs = sum(len(idx) for _s, idx in spec["pairs"])
    band_list = ", ".join(f"'{b}'" for b in spec["bands"])
    sql = (f"SELECT p.aoi_id, r.id AS scene_id, {function}(r, p.geom, [{band_list}]) AS px "
           "FROM scenes r JOIN pairs p ON r.id = p.scene_id")
    run.extra["rows"] = n_pairs
    if spec["kind"] == "stream":
        keep = set(spec.get("check_aois", []))
        hashes: dict[str, str] = {}
        res = con.execute(sql)
        n = int(spec.get("batch_rows", 2048))
        reader = res.to_arrow_reader(n) if hasattr(res, "to_arrow_reader") else res.fetch_record_batch(n)
        rows = pixels = 0
        rss_base = peak_rss_mb()
        for batch in reader:
            rows += batch.num_rows
            h = _contiguous(batch.column("px"))
            heights = h.field("height").fill_null(0).to_numpy(zero_copy_only=False)
            widths = h.field("width").fill_null(0).to_numpy(zero_copy_only=False)
            pixels += int((heights.astype(np.int64) * widths).sum())
            hashes.update(_row_hashes(batch, keep))
        run.done()
        run.extra.update(rows_streamed=rows, pixels=pixels, rss_before_stream_mb=rss_base)
        return hashes
    rel = con.sql(sql)  # a relation: DuckDB 2 warns that execute(...).to_arrow_table() copies the rows once more
    table = rel.to_arrow_table(batch_size=FETCH_BATCH) if hasattr(rel, "to_arrow_table") else rel.arrow()
    run.done()
    if saved is not None:
        run.extra["lookup_s"] = saved.lookup_s
    if DUMP:
        with ipc.new_file(saved_result_path(run.spec_path), table.schema) as w:
            w.write_table(table)
    out: dict[str, str] = {}
    for batch in table.to_batches():
        out.update(_row_hashes(batch, None))
    return out


main_guard(run, body)
