"""Reader: rasterduck via SQL (DuckDB), on the same collection and pairs as the Python reader.

    con = rasterduck.connect(); rasterduck.attach(con, "scenes", <collection.parquet>)
    SELECT p.aoi_id, r.id, load_bands(r, p.geom, [bands]) FROM scenes r JOIN pairs p ON r.id = p.scene_id

With RASTERDUCK_BENCH_SQL_FUNCTION=load_bands_raw (the harness's "rasterduck-sql-raw") the same query
calls load_bands_raw: pixels as BLOBs instead of lists.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, SkipReader, key, main_guard, peak_rss_mb, pixel_hash

FUNCTION = os.environ.get("RASTERDUCK_BENCH_SQL_FUNCTION", "load_bands")
FETCH_BATCH = 8  # rows per Arrow batch of the fetched result (the README's advice for large windows)
run = Run("rasterduck-sql-raw" if FUNCTION == "load_bands_raw" else "rasterduck-sql")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import rasterduck  # noqa: E402

_IMPORT_ERROR: str | None = None
try:
    import rasterduck.duck

    rasterduck.connect  # noqa: B018  (AttributeError while the SQL surface is missing)
    rasterduck.attach  # noqa: B018
except (ImportError, AttributeError) as exc:
    _IMPORT_ERROR = f"rasterduck SQL surface not importable yet ({type(exc).__name__}: {exc})"
import duckdb  # noqa: E402, F401

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
    run.session_opened()  # opening a database and registering the functions: once per session, reported apart
    rasterduck.attach(con, "scenes", spec["rasterduck_collection"])
    # the AOI pairs as a user keeps them: a Parquet file (written by the harness, run.py write_pairs)
    con.execute("CREATE TEMP VIEW pairs AS FROM read_parquet('" + spec["pairs_parquet"].replace("'", "''") + "')")
    n_pairs = sum(len(idx) for _s, idx in spec["pairs"])
    band_list = ", ".join(f"'{b}'" for b in spec["bands"])
    sql = (f"SELECT p.aoi_id, r.id AS scene_id, {FUNCTION}(r, p.geom, [{band_list}]) AS px "
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
            h = batch.column("px").combine_chunks() if isinstance(batch.column("px"), pa.ChunkedArray) else batch.column("px")
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
    out: dict[str, str] = {}
    for batch in table.to_batches():
        out.update(_row_hashes(batch, None))
    return out


main_guard(run, body)
