"""rasterduck benchmark: one command, every reader on the same data and server in the same run.

    python benchmarks/run.py [--scenarios S1,S2,...] [--latency 0.04] [--quick] [--runs 3]
                             [--readers rasterduck,rasterio,...] [--profile S6:rasterduck]

Generates (or reuses) the Sentinel-2-like COGs (benchmarks/data.py), serves them with tests/httpserver.py
at the given first-byte latency, builds the collections (rasterduck and rasteret, untimed setup), then
runs every reader on every scenario: >= 3 cold runs each (fresh server, fresh process), pixels checked
against rasterio/GDAL (hash per AOI x scene x band) before a time counts. Results go to
benchmarks/results/<stamp>.json, results/latest.json and results/latest.md. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bound  # noqa: E402
import data  # noqa: E402
import harness  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402

CACHE = HERE / ".cache"
RESULTS = HERE / "results"
READ_READERS = ["rasterduck-sql", "rasterduck-sql-raw", "rasterduck-sql-floor", "rasterduck", "rasterio", "rasteret",
                "async-tiff"]
BUILD_READERS = ["rasterduck", "rasteret"]
STREAM_READERS = ["rasterduck-sql"]


def log(msg: str) -> None:
    """Progress on stderr."""
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default=",".join(scenarios.ALL_SCENARIOS), help="comma list of S1..S6")
    ap.add_argument("--latency", default="0.04", help="first-byte latency in seconds (comma list for several)")
    ap.add_argument("--s6-extra-latency", type=float, default=0.1,
                    help="also run S6 at this latency (0: off; off in --quick)")
    ap.add_argument("--bandwidth", type=float, default=None, help="server cap per response, bytes/s")
    ap.add_argument("--runs", type=int, default=3, help="cold runs per reader and scenario (median)")
    ap.add_argument("--readers", default=None, help="comma list (default: all that apply)")
    ap.add_argument("--quick", action="store_true", help="small data, 1 run: a smoke test (< 2 min)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    ap.add_argument("--profile", default=None,
                    help="SCENARIO:READER[@LATENCY][,...]: one extra run each under py-spy")
    ap.add_argument("--py-spy", default=os.environ.get("RASTERDUCK_BENCH_PYSPY", "/work/venv-bench312/bin/py-spy"))
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each run wait up to this many s for other processes to leave the CPU "
                         "(default 60; 0 with --quick: off)")
    ap.add_argument("--contended-retries", type=int, default=None,
                    help="repeat a run whose other processes took over 10%% of the cores meanwhile, keeping the "
                         "least contended attempt (default 2; 0 with --quick)")
    ap.add_argument("--rerender", default=None, metavar="RESULTS_JSON",
                    help="only rebuild the markdown (and README for a full run) from a saved results file")
    ap.add_argument("--no-save", action="store_true", help="do not write results/latest.*")
    return ap.parse_args(argv)


def write_spec(name: str, spec: dict[str, Any]) -> Path:
    """Store a spec where the reader processes can load it."""
    path = CACHE / "specs" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.get("pairs") and spec.get("kind") in ("read", "stream"):
        spec = {**spec, "pairs_parquet": str(write_pairs(spec, CACHE / "specs" / f"{name}-pairs.parquet"))}
    path.write_text(json.dumps(spec))
    return path


def write_pairs(spec: dict[str, Any], path: Path) -> Path:
    """The scenario's (scene, AOI) pairs as a Parquet table (scene_id, aoi_id, geom WKB): the SQL reader's
    AOI table, as a user's would live in a file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scene_ids, aoi_ids, geoms = [], [], []
    for s, idx in spec["pairs"]:
        for i in idx:
            scene_ids.append(spec["scenes"][s]["id"])
            aoi_ids.append(spec["aois"][i]["id"])
            geoms.append(bytes.fromhex(spec["aois"][i]["wkb"]))
    pq.write_table(pa.table({"scene_id": scene_ids, "aoi_id": aoi_ids, "geom": pa.array(geoms, pa.binary())}), path)
    return path


def tile_table_reference(records: list[dict[str, Any]], bands: list[str], root: Path) -> dict[str, str]:
    """S4's reference: each file's full-resolution tile table, read by tifffile from the local file."""
    import numpy as np
    import tifffile
    from common import key, pixel_hash

    out = {}
    cache: dict[Path, str] = {}
    for r in records:
        for b in bands:
            p = bound.local_path(r["assets"][b], root)
            if p not in cache:
                with tifffile.TiffFile(p) as tf:
                    pg = tf.pages[0]
                    cache[p] = pixel_hash(np.array([pg.dataoffsets, pg.databytecounts], np.int64))
            out[key("tiles", r["id"], b)] = cache[p]
    return out


def fetch_floor(ranges: list[tuple[str, int, int]], root: Path, port: int, latency: float,
                bandwidth: float | None, repeats: int = 3) -> float:
    """Best of `repeats` bare-client fetches of the scenario's requests, each from a fresh server."""
    best = float("inf")
    for _ in range(repeats):
        srv = harness.Server(root, port, latency, bandwidth)
        try:
            best = min(best, bound.raw_fetch_seconds(ranges))
        finally:
            srv.stop()
    return best


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt  # so every `finally` runs: servers and readers of this run are stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.rerender:
        return rerender(Path(args.rerender), save=not args.no_save)
    t_start = time.time()
    layout = data.LAYOUTS["quick" if args.quick else "full"]
    runs = 1 if args.quick else args.runs
    quiet_wait = args.quiet_wait if args.quiet_wait is not None else (0.0 if args.quick else 60.0)
    latencies = [float(x) for x in args.latency.split(",")]
    wanted = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    only_readers = set(args.readers.split(",")) if args.readers else None

    log(f"data: layout {layout.name} ({layout.size} px) in {data.layout_dir(layout)}")
    manifest = data.ensure_data(layout, log=log)
    root = data.layout_dir(layout)
    port = args.port or harness.free_port()
    base_url = f"http://127.0.0.1:{port}"
    cache = str(CACHE / layout.name)
    specs = scenarios.build_specs(manifest, base_url, cache)
    s4_big = next(k for k in specs if k.startswith("S4-") and k != "S4-32")

    # measured bandwidth of the server (for the lower bounds) and setup builds at latency 0
    srv = harness.Server(root, port, 0.0, args.bandwidth)
    try:
        bw = args.bandwidth or bound.measure_bandwidth(base_url, manifest["scenes"][0]["files"]["B04"])
    finally:
        srv.stop()
    log(f"server bandwidth: {bw / 1e6:.0f} MB/s (4 connections, latency 0)")
    reference_tiles = {
        "S4-32": tile_table_reference(specs["S4-32"]["records"], specs["S4-32"]["bands"], root),
        s4_big: tile_table_reference(specs[s4_big]["records"], specs[s4_big]["bands"], root),
    }
    need_reads = any(s in wanted for s in ("S1", "S2", "S3", "S5", "S6")) or bool(args.profile)
    setup: dict[str, Any] = {}
    if need_reads:
        for spec in scenarios.setup_builds(specs):
            path = write_spec(spec["scenario"], spec)
            for rname in ("rasterduck", "rasteret"):
                res = harness.run_reader(harness.READERS[rname], path, root, port, 0.0)
                ok = "work_s" in res
                setup[f"{spec['scenario']}/{rname}"] = {"ok": ok, "seconds": res.get("work_s"),
                                                       "error": res.get("error") or res.get("skipped")}
                log(f"setup {spec['scenario']} {rname}: " + (f"{res['work_s']:.2f} s" if ok else
                    f"FAILED {(res.get('error') or res.get('skipped', ''))[:300]}"))

    cores = os.cpu_count() or 1
    results: list[dict[str, Any]] = []
    plan: list[tuple[str, float]] = []
    for s in wanted:
        names = ["S4-32", s4_big] if s == "S4" else [s]
        for name in names:
            for lat in latencies:
                plan.append((name, lat))
            if s == "S6" and args.s6_extra_latency and not args.quick and args.s6_extra_latency not in latencies:
                plan.append((name, args.s6_extra_latency))

    references: dict[str, dict[str, str]] = {}
    saved_sql: set[str] = set()
    for name, lat in plan:
        spec = specs[name]
        spec_path = write_spec(name, spec)
        kind = spec["kind"]
        readers = {"read": READ_READERS, "build": BUILD_READERS, "stream": STREAM_READERS}[kind]
        if only_readers is not None:
            readers = [r for r in readers if r in only_readers]
        # the reference: tile tables (S4), rasterio/GDAL pixels (reads), rasterio on S5's check AOIs
        if kind == "build":
            reference = reference_tiles[name]
        elif name in references:
            reference = references[name]
        else:
            ref_spec = scenarios.check_subset(spec) if kind == "stream" else spec
            ref_path = write_spec(f"{name}-reference", ref_spec)
            for _attempt in range(3):
                ref = harness.run_reader(harness.READERS["rasterio"], ref_path, root, port, 0.0)
                reference = ref.get("hashes", {})
                log(f"{name}: reference (rasterio/GDAL at latency 0): {len(reference)} arrays"
                    + ("" if reference else f"; FAILED {(ref.get('traceback') or ref.get('error', ''))[-1500:]}"))
                if reference:
                    break
            references[name] = reference
        if kind == "read":
            b = bound.read_bound(spec, root, lat, bw, cores,
                                 fetch_floor=lambda ranges, lat=lat: fetch_floor(ranges, root, port, lat, args.bandwidth))
        elif kind == "build":
            b = bound.build_bound(spec["records"], spec["bands"], root, lat, bw)
        else:
            b = {}
        entry: dict[str, Any] = {"scenario": name, "latency": lat, "kind": kind, "bound": b, "readers": {},
                                 "pairs": sum(len(i) for _, i in spec.get("pairs", [])),
                                 "files": len(spec.get("records") or spec.get("scenes") or []) * len(spec["bands"])}
        if "rasterduck-sql-floor" in readers and name not in saved_sql:
            res = harness.run_reader(harness.READERS["rasterduck-sql-save"], spec_path, root, port, 0.0)
            saved_sql.add(name)
            log(f"{name}: SQL result saved for the floor" if "work_s" in res else
                f"{name}: saving the SQL result FAILED: {(res.get('traceback') or res.get('error', ''))[-800:]}")
        # rounds, not reader after reader: run k of every reader, then run k + 1 of every reader, so that a
        # slow spell of a shared machine hits all readers alike and the ratios between them hold
        reader_runs: dict[str, list[dict[str, Any]]] = {r: [] for r in readers}
        checks: dict[str, list[dict[str, Any]]] = {r: [] for r in readers}
        active = list(readers)
        for k in range(runs):
            for rname in list(active):
                reader = harness.READERS[rname]
                res = run_least_contended(reader, spec_path, root, port, lat, args, quiet_wait)
                if "error" in res:  # one more try: a rare crash should not void the cell (it is logged)
                    log(f"{name} @{lat * 1000:.0f} ms {rname}: run failed, retrying once: "
                        f"{(res.get('traceback') or res['error'])[-800:]}")
                    res = run_least_contended(reader, spec_path, root, port, lat, args, quiet_wait)
                if "hashes" in res:
                    checks[rname].append(harness.compare(reference, res.pop("hashes")))
                reader_runs[rname].append(res)
                if "skipped" in res or "error" in res:
                    active.remove(rname)
                    continue
                log(f"{name} @{lat * 1000:.0f} ms {rname} run {k + 1}: work {res['work_s']:.3f} s, wall "
                    f"{res['wall_s']:.3f} s, {res['server']['requests']} req, {res['server']['bytes'] / 1e6:.1f} MB, "
                    f"other processes {res['other_cpu_s']:.2f} CPU s")
        for rname in readers:
            summary = harness.summarize(reader_runs[rname])
            if checks[rname] and not reference:
                summary["status"] = "unchecked"
                summary["reason"] = "the rasterio/GDAL reference failed; times not counted"
            elif checks[rname]:
                summary["check"] = checks[rname][0]
                if not all(c["ok"] for c in checks[rname]):
                    bad = next(c for c in checks[rname] if not c["ok"])
                    summary["check"] = bad
                    summary["status"] = "pixels differ"
            if summary["status"] != "ok":
                log(f"{name} @{lat * 1000:.0f} ms {rname}: {summary['status']}: "
                    f"{summary.get('reason') or summary.get('check')}"[:600])
            entry["readers"][rname] = summary
        results.append(entry)

    profiles = [run_profile(p, args.py_spy, specs, root, port, latencies[0])
                for p in (args.profile.split(",") if args.profile else [])]

    doc = {
        "stamp": dt.datetime.now().strftime("%Y%m%d-%H%M%S"), "quick": args.quick, "runs": runs,
        "layout": manifest["layout"], "compression_ratio_level0": manifest["compression_ratio_level0"],
        "data_bytes": sum(manifest["file_bytes"].values()), "bandwidth_Bps": bw, "cores": cores,
        "machine": report.machine(), "setup": setup, "results": results, "profiles": profiles,
        "seconds": time.time() - t_start,
    }
    doc["targets"] = report.targets(doc)
    md = report.markdown(doc)
    summary_lines = doc.pop("_summary_lines", None)
    print(md)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        tag = "quick" if args.quick else "full"
        (RESULTS / f"{doc['stamp']}-{tag}.json").write_text(json.dumps(doc, indent=1))
        (RESULTS / f"latest-{tag}.json").write_text(json.dumps(doc, indent=1))
        (RESULTS / f"latest-{tag}.md").write_text(md)
        if not args.quick:
            (RESULTS / "latest.json").write_text(json.dumps(doc, indent=1))
            (RESULTS / "latest.md").write_text(md)
            update_readme(report.readme_block({"_summary_lines": summary_lines}))
    log(f"done in {time.time() - t_start:.0f} s")
    return 0


def run_least_contended(reader: harness.Reader, spec_path: Path, root: Path, port: int, lat: float,
                        args: argparse.Namespace, quiet_wait: float) -> dict[str, Any]:
    """One cold run; repeated (up to --contended-retries times) while other processes of a shared machine
    took more than 10 % of the cores during it. The least contended attempt is kept, with the count."""
    retries = args.contended_retries if args.contended_retries is not None else (0 if args.quick else 2)
    cores = os.cpu_count() or 1
    best: dict[str, Any] | None = None
    for attempt in range(retries + 1):
        res = harness.run_reader(reader, spec_path, root, port, lat, bandwidth=args.bandwidth, quiet_wait=quiet_wait)
        res["contention"] = res.get("other_cpu_s", 0.0) / max(res.get("process_s", 1.0) * cores, 1e-9)
        res["attempts"] = attempt + 1
        if best is None or res["contention"] < best["contention"] or "work_s" not in best:
            best = res
        if "work_s" not in res or res["contention"] <= 0.10 or res.get("process_s", 0) > 20:
            break  # long runs are not repeated: the harness would take hours on a busy machine
        log(f"  {reader.name}: other processes used {res['contention']:.0%} of the cores during the run; repeating")
    assert best is not None
    best["attempts"] = attempt + 1
    return best


def rerender(path: Path, save: bool) -> int:
    """Markdown (and README) again from a results JSON; profile summaries are recomputed from their raw files."""
    doc = json.loads(path.read_text())
    for p in doc.get("profiles") or []:
        raw = HERE / p["file"]
        if raw.exists():
            p.update(summarize_profile(raw))
    doc["targets"] = report.targets(doc)
    md = report.markdown(doc)
    summary_lines = doc.pop("_summary_lines", None)
    print(md)
    if save:
        tag = "quick" if doc["quick"] else "full"
        path.write_text(json.dumps(doc, indent=1))
        (RESULTS / f"latest-{tag}.md").write_text(md)
        if not doc["quick"]:
            (RESULTS / "latest.json").write_text(json.dumps(doc, indent=1))
            (RESULTS / "latest.md").write_text(md)
            update_readme(report.readme_block({"_summary_lines": summary_lines}))
    return 0


def update_readme(block: str) -> None:
    """Put the latest full run's summary between the README's markers."""
    readme = HERE / "README.md"
    text = readme.read_text()
    start, end = "<!-- latest:start -->", "<!-- latest:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _old, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{block}\n{end}{tail}")


def run_profile(what: str, py_spy: str, specs: dict[str, Any], root: Path, port: int, default_lat: float
                ) -> dict[str, Any]:
    """One extra run of SCENARIO:READER[@LATENCY] under py-spy; a summary of where the samples fall."""
    target, _, lat_s = what.strip().partition("@")
    name, _, rname = target.partition(":")
    lat = float(lat_s) if lat_s else default_lat
    spec_path = write_spec(name, specs[name])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"profile-{name}-{rname}-{int(lat * 1000)}ms.txt"
    res = harness.run_reader(harness.READERS[rname], spec_path, root, port, lat, profile_out=out,
                             py_spy=Path(py_spy))
    res.pop("hashes", None)
    summary = summarize_profile(out) if out.exists() else {"error": res.get("error", "no profile written")}
    summary.update(scenario=name, reader=rname, latency=lat, file=str(out.relative_to(HERE)),
                   work_s=res.get("work_s"), wall_s=res.get("wall_s"))
    return summary


PROFILE_BUCKETS = (  # first match wins, tested against every frame of a stack from the leaf up
    ("import", ("_find_and_load",)),
    ("mask / rasterize", ("rasterize.py", "gdalmask.py", "geometry_mask")),
    ("decode", ("decode.py", "imagecodecs", "deflate", "zlib", "decompress", "_decode")),
    ("idle pool worker", ("concurrent/futures/thread.py:89", "Condition.wait", "Condition.__enter__")),
    ("CRS transform", ("pyproj", "transform_geometry")),
    ("mosaic / assemble", ("_mosaic", "assemble")),
    ("plan (other)", ("plan",)),
    ("HTTP / event loop", ("aiohttp", "asyncio", "selectors.py", "ssl.py", "http.py", "backend.py")),
    ("DuckDB / Arrow", ("duckdb", "pyarrow", "rasterduck/duck/")),
)


def _bucket(frames: list[str]) -> str:
    """The bucket of a stack: imports anywhere win; else the first frame from the leaf up that matches."""
    if any("_find_and_load" in f for f in frames):
        return "import"
    for f in frames:
        for name, needles in PROFILE_BUCKETS:
            if any(n in f for n in needles):
                return name
    return "other"


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Where py-spy's samples fall: per bucket (imports split off), per thread, top functions (self and
    inclusive) of the work after imports."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        b = _bucket(frames[::-1])
        buckets[b] += count
        if b == "import":
            continue
        threads[frames[0].split(": ", 1)[-1].rstrip("0123456789_-")] += count
        self_c[frames[-1]] += count
        for f in set(frames[1:]):
            incl[f] += count
    return {"samples": total, "hz": 250, "buckets": buckets.most_common(), "threads": threads.most_common(10),
            "self": self_c.most_common(top), "inclusive": incl.most_common(top)}


if __name__ == "__main__":
    raise SystemExit(main())
