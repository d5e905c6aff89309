"""Spark benchmark: load_bands throughput in Spark local mode (local[1] vs local[2]) and per-partition tile reuse.

    python benchmarks/spark/run.py                   # full layout: 80 scenes x 200 fields x B04, B08
    python benchmarks/spark/run.py --quick           # quick layout, fewer scenes (a smoke run)

Data: benchmarks/data.py's Sentinel-2-like COGs (uint16, 1024 px DEFLATE tiles), served by
tests/httpserver.py with 40 ms first-byte latency. Scene j of `--scenes` is real scene j % 8 under its own
URL (/v/s<j>/...), so no two scenes share a tile, as in a real archive. Pairs are (scene, AOI) whose
lon/lat boxes overlap, shuffled, in a Parquet file; the collection is built with rasterduck.build_collection.

Each master runs in its own process (a fresh JVM and Python workers, which also serves the files) through:
  job       rasterduck.spark.load_bands_job: repartition + sort by scene, one kernel call per ~2048 rows of
            whole scenes, results written to Parquet
  udf-N     spark.sql(load_bands(struct(r.*), p.geom, ...)) over the join, to the `noop` sink; one kernel call
            per Arrow batch of N rows (maxRecordsPerBatch; 10,000 is Spark's default), pairs in the file's
            (shuffled) order: the smaller the batch, the fewer pairs of a scene per call, the less tile reuse;
            `-clustered` adds CLUSTER BY scene id before the UDF (the job's ordering, in plain SQL)
and reports pairs/s and range requests per pair (the server's counters). `plan-per-scene` is the reference
count: the kernel called once per scene in one process, no Spark. `cost model` splits the kernel's CPU time
into a per-tile part (fetch + decode) and a per-pair part (window, mask, result) from two latency-free
in-process runs (all pairs, then every pair twice). Results: benchmarks/spark/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

from data import LAYOUTS, ensure_data, layout_dir  # noqa: E402
from httpserver import RangeServer  # noqa: E402
from scenarios import scene_entries  # noqa: E402

PHASES = ("job", "udf-10000", "udf-2048", "udf-2048-clustered", "udf-256")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- setup (parent) ---------------------------------------------------------------------------------
def prepare(args: argparse.Namespace, work: Path, port: int) -> dict[str, Any]:
    """Build the collection (through a latency-free server on `port`) and the shuffled pairs file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely

    import rasterduck

    layout = LAYOUTS[args.layout]
    manifest = ensure_data(layout)
    root = layout_dir(layout)
    base = f"http://127.0.0.1:{port}"
    scenes = scene_entries(manifest, base, n_virtual=args.scenes, bands=args.bands)
    items = [{
        "type": "Feature", "stac_version": "1.0.0", "id": s["id"],
        "geometry": shapely.geometry.mapping(shapely.from_wkb(bytes.fromhex(s["footprint_wkb"]))),
        "properties": {"datetime": s["datetime"], "proj:epsg": s["epsg"]},
        "assets": {b: {"href": s["assets"][b], "type": "image/tiff; application=geotiff"} for b in args.bands},
    } for s in scenes]
    with RangeServer(root, port=port):
        coll = rasterduck.build_collection(stac=items, bands=args.bands)
    assert not coll.errors(), coll.errors()
    coll_path = coll.to_parquet(work / "collection.parquet")
    wkbs = [bytes.fromhex(h) for h in manifest["aois"][args.aois][: args.max_aois]]
    boxes = [shapely.from_wkb(w).bounds for w in wkbs]
    rows = []
    for s in scenes:
        x0, y0, x1, y1 = s["bbox"]
        rows += [(s["id"], i, w) for i, (w, b) in enumerate(zip(wkbs, boxes, strict=True))
                 if b[2] >= x0 and b[0] <= x1 and b[3] >= y0 and b[1] <= y1]
    random.Random(7).shuffle(rows)
    table = pa.table({"scene_id": [r[0] for r in rows], "aoi_id": pa.array([r[1] for r in rows], pa.int32()),
                      "geom": pa.array([r[2] for r in rows], pa.binary())})
    pq.write_table(table, work / "pairs.parquet", row_group_size=4096)
    return {"root": str(root), "collection": str(coll_path), "pairs": str(work / "pairs.parquet"),
            "n_pairs": len(rows), "n_scenes": len(scenes), "n_aois": len(wkbs)}


def plan_per_scene(args: argparse.Namespace, setup: dict[str, Any], port: int) -> dict[str, Any]:
    """Reference: the kernel once per scene over all its pairs, in this process (requests per pair)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rasterduck.core import kernel as K

    coll = pq.read_table(setup["collection"]).combine_chunks()
    records = coll.to_struct_array().combine_chunks()
    index = {rid: i for i, rid in enumerate(coll["id"].to_pylist())}
    pairs = pq.read_table(setup["pairs"])
    with RangeServer(setup["root"], port=port, latency=args.latency) as srv:
        kernel = K.Kernel()
        t0 = time.perf_counter()
        for rid in index:
            sel = pairs.filter(pc.equal(pairs["scene_id"], rid))
            if not sel.num_rows:
                continue
            recs = records.take([index[rid]] * sel.num_rows)
            K.load_bands_arrow(recs, sel["geom"], args.bands, pixel_type="uint16", context=kernel)
        secs = time.perf_counter() - t0
        return {"seconds": secs, "pairs": pairs.num_rows, "requests": srv.requests, "bytes": srv.bytes_sent}


def cost_model(args: argparse.Namespace, setup: dict[str, Any], port: int) -> dict[str, Any]:
    """CPU seconds per tile and per pair of the kernel (no latency, one process, one call per scene):
    T1 over every pair, T2 with every pair twice (same tiles) -> per pair = (T2 - T1) / pairs."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rasterduck.core import kernel as K
    from rasterduck.core.read import ReadRequest, ReadStats, read_batch

    coll = pq.read_table(setup["collection"]).combine_chunks()
    records = coll.to_struct_array().combine_chunks()
    pairs = pq.read_table(setup["pairs"])
    scenes = []
    for i, rid in enumerate(coll["id"].to_pylist()):
        geoms = pairs.filter(pc.equal(pairs["scene_id"], rid))["geom"].combine_chunks()
        if len(geoms):
            scenes.append((records.take([i] * len(geoms)), geoms))

    def run(copies: int) -> float:
        kernel = K.Kernel()
        t0 = time.process_time()  # every thread of the process: decode pool, I/O loop, caller
        for recs, geoms in scenes:
            idx = np.repeat(np.arange(len(geoms)), copies)
            K.load_bands_arrow(recs.take(idx), geoms.take(idx), args.bands, pixel_type="uint16", context=kernel)
        return time.process_time() - t0

    stats = ReadStats()
    with RangeServer(setup["root"], port=port):
        run(1)  # warm-up: imports, CRS transformers, connections
        t1, t2 = run(1), run(2)
        kernel = K.Kernel()
        for recs, geoms in scenes:  # the unique tiles of one pass, from the read kernel's own counters
            chunk = K.ChunkRecords(recs, kernel.cache)
            reqs = [ReadRequest(chunk.ids[i], g, "EPSG:4326", chunk.sources(i, args.bands))
                    for i, g in enumerate(K.parse_geoms(geoms))]
            kernel.run(read_batch(reqs, kernel.backend, pixel_budget=None, stats=stats))
    n = pairs.num_rows
    per_pair = max(t2 - t1, 0.0) / n
    per_tile = max(t1 - n * per_pair, 0.0) / max(stats.tiles, 1)
    return {"cpu_s_once": round(t1, 2), "cpu_s_twice": round(t2, 2), "tiles": stats.tiles,
            "cpu_ms_per_pair": round(per_pair * 1000, 3), "cpu_ms_per_tile": round(per_tile * 1000, 2)}


# ---- one master (child process) ---------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """Run every phase on one Spark master; print one JSON line."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    from pyspark.sql import SparkSession

    import rasterduck.spark

    setup = json.loads(args.setup)
    cores = int(args.child.removeprefix("local[").removesuffix("]"))
    spark = (SparkSession.builder.master(args.child).appName("rasterduck-bench")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
             .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.memory", "4g")
             .config("spark.sql.shuffle.partitions", str(4 * cores))
             .config("spark.sql.warehouse.dir", tempfile.mkdtemp(prefix="rasterduck-spark-warehouse-")).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    rasterduck.spark.register(spark, collection=setup["collection"])
    spark.read.parquet(setup["collection"]).createOrReplaceTempView("coll")
    # round-robin over 4 partitions per core: the UDF path gets every core, pairs stay in shuffled order
    spark.read.parquet(setup["pairs"]).repartition(4 * cores).createOrReplaceTempView("pairs")
    bands = ", ".join(f"'{b}'" for b in args.bands)
    pairs = spark.sql("SELECT p.aoi_id, struct(r.*) AS record, p.geom FROM coll r JOIN pairs p ON r.id = p.scene_id")
    # the collection is broadcast and the pairs stream in their partitions and order, as in a big job (left to
    # itself Spark broadcasts the smaller side: here the pairs, which puts them in collection order)
    udf_sql = (f"SELECT /*+ BROADCAST(r) */ p.aoi_id, r.id, load_bands(struct(r.*), p.geom, array({bands})) AS px "
               "FROM coll r JOIN pairs p ON r.id = p.scene_id")
    clustered_sql = (f"SELECT aoi_id, id, load_bands(rec, geom, array({bands})) AS px FROM (SELECT /*+ BROADCAST(r) */ "
                     "p.aoi_id, r.id, struct(r.*) AS rec, p.geom FROM coll r JOIN pairs p ON r.id = p.scene_id "
                     "CLUSTER BY id)")
    out = Path(args.work) / f"out-{cores}"
    results: dict[str, Any] = {"master": args.child}
    with RangeServer(setup["root"], port=args.port, latency=args.latency) as srv:
        # warm-up: start the Python workers (imports, kernels) on a few pairs, not measured
        rasterduck.spark.load_bands_job(pairs.limit(4 * cores), args.bands, str(out / "warm"), mode="overwrite",
                                        dtype="uint16", partitions=cores)
        spark.sql(udf_sql + f" LIMIT {4 * cores}").write.format("noop").mode("overwrite").save()
        for phase in PHASES:
            times = []
            runs = 1 if phase == "udf-256" else args.repeat  # its time is the bytes it moves, not JIT warm-up
            for _ in range(runs):  # best of N: the first run of a phase also warms the JVM's JIT
                srv.wait_idle()
                srv.reset_counters()
                t0 = time.perf_counter()
                if phase == "job":
                    summary = rasterduck.spark.load_bands_job(pairs, args.bands, str(out / "job"), mode="overwrite",
                                                              dtype="uint16", partitions=4 * cores)
                    extra = {"kernel_calls": summary.calls, "results": summary.results, "errors": summary.errors}
                else:
                    batch = phase.split("-")[1]
                    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", batch)
                    sql = clustered_sql if phase.endswith("clustered") else udf_sql
                    spark.sql(sql).write.format("noop").mode("overwrite").save()
                    extra = {"max_records_per_batch": int(batch)}
                times.append(time.perf_counter() - t0)
            secs = min(times)
            n = setup["n_pairs"]
            results[phase] = {"seconds": round(secs, 2), "runs_s": [round(t, 2) for t in times],
                              "pairs_per_s": round(n / secs, 1), "requests": srv.requests,
                              "requests_per_pair": round(srv.requests / n, 4), "mb": round(srv.bytes_sent / 1e6, 1),
                              "peak_in_flight": srv.peak_in_flight, **extra}
    spark.stop()
    print("RESULT " + json.dumps(results), flush=True)


# ---- driver -----------------------------------------------------------------------------------------
def main() -> None:
    """Prepare, run each master in a child process, print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="quick layout, 8 scenes x 12 fields")
    ap.add_argument("--layout", default="full", choices=sorted(LAYOUTS))
    ap.add_argument("--scenes", type=int, default=80, help="virtual scenes (distinct URLs over the 8 real ones)")
    ap.add_argument("--aois", default="fields", choices=["fields", "stream", "large"])
    ap.add_argument("--max-aois", type=int, default=200)
    ap.add_argument("--bands", default="B04,B08")
    ap.add_argument("--latency", type=float, default=0.04)
    ap.add_argument("--masters", default="local[1],local[2]")
    ap.add_argument("--repeat", type=int, default=2, help="runs per phase; the best is reported")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--setup", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.bands = args.bands.split(",") if isinstance(args.bands, str) else args.bands
    if args.child:
        child(args)
        return
    if args.quick:
        args.layout, args.scenes, args.max_aois = "quick", 8, 12
    with tempfile.TemporaryDirectory(prefix="rasterduck-spark-bench-") as tmp:
        work = Path(tmp)
        port = _free_port()
        setup = prepare(args, work, port)
        print(f"{setup['n_scenes']} scenes x {setup['n_aois']} AOIs -> {setup['n_pairs']} pairs, bands {args.bands}, "
              f"latency {args.latency * 1000:.0f} ms", flush=True)
        ref = plan_per_scene(args, setup, port)
        print(f"plan-per-scene (no Spark, 1 process): {ref['requests']} requests, "
              f"{ref['requests'] / ref['pairs']:.4f} per pair, {ref['seconds']:.1f} s", flush=True)
        cost = cost_model(args, setup, port)
        print(f"cost model (kernel CPU, no latency): {cost['cpu_ms_per_tile']} ms per tile ({cost['tiles']} tiles), "
              f"{cost['cpu_ms_per_pair']} ms per pair", flush=True)
        runs = []
        for master in args.masters.split(","):
            cmd = [sys.executable, __file__, "--child", master, "--setup", json.dumps(setup), "--work", str(work),
                   "--port", str(port), "--latency", str(args.latency), "--bands", ",".join(args.bands),
                   "--repeat", str(args.repeat)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                raise SystemExit(f"{master} failed (exit {proc.returncode})")
            runs.append(json.loads(line[len("RESULT "):]))
            r = runs[-1]
            for phase in PHASES:
                p = r[phase]
                print(f"{master:9s} {phase:9s} {p['seconds']:7.2f} s  {p['pairs_per_s']:8.1f} pairs/s  "
                      f"{p['requests']:6d} requests  {p['requests_per_pair']:.4f} req/pair  {p['mb']:7.1f} MB",
                      flush=True)
    report = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine_cores": os.cpu_count(),
              "layout": args.layout, "latency_s": args.latency, "bands": args.bands,
              **{k: setup[k] for k in ("n_scenes", "n_aois", "n_pairs")}, "plan_per_scene": ref, "cost_model": cost,
              "runs": runs}
    (HERE / "results").mkdir(exist_ok=True)
    out = HERE / "results" / f"{args.layout}-{args.scenes}x{args.max_aois}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
