"""Sweep of the range-coalescing parameters (max_gap, max_size) on the benchmark's read scenarios.

    python benchmarks/coalesce_sweep.py [--scenarios S2,S3] [--runs 3] [--latency 0.04]

Each cell: a fresh server and a fresh reader process (`Collection.read` with a DefaultBackend built with
the cell's parameters), median work seconds of `--runs`, and the requests the server counted. Uses the
specs and data the main harness (run.py) prepared; run that once first. Prints a markdown table and
writes results/coalesce-sweep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402

READER = r'''
import json, sys, time
import shapely
import rasterduck
from rasterduck.io.backend import DefaultBackend
spec = json.load(open(sys.argv[1])); gap, size = int(sys.argv[2]), int(sys.argv[3])
aois = [shapely.from_wkb(bytes.fromhex(a["wkb"])) for a in spec["aois"]]
t0 = time.perf_counter()
coll = rasterduck.open_collection(spec["rasterduck_collection"])
be = DefaultBackend(max_gap=gap, max_size=size)
res = coll.read(aois, spec["bands"], backend=be)
print(json.dumps({"work_s": time.perf_counter() - t0, "results": len(res)}))
'''

GAPS = [0, 64 * 1024, 2 * 1024 * 1024]
SIZES = [2 * 1024 * 1024, 8 * 1024 * 1024, 16 * 1024 * 1024, 64 * 1024 * 1024]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default="S2,S3")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.04)
    args = ap.parse_args()
    root = HERE / "data" / "full"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(HERE.parent / "src")
    rows = []
    for sc in args.scenarios.split(","):
        spec_path = HERE / ".cache" / "specs" / f"{sc}.json"
        port = int(json.loads(spec_path.read_text())["base_url"].rsplit(":", 1)[1])
        for gap in GAPS:
            for size in SIZES:
                times, reqs = [], []
                for _ in range(args.runs):
                    srv = harness.Server(root, port, args.latency)
                    try:
                        out = subprocess.run([sys.executable, "-c", READER, str(spec_path), str(gap), str(size)],
                                             capture_output=True, text=True, env=env, timeout=600)
                    finally:
                        counts = srv.stop()
                    if out.returncode != 0:
                        raise SystemExit(out.stderr[-2000:])
                    times.append(json.loads(out.stdout.strip().splitlines()[-1])["work_s"])
                    reqs.append(counts["requests"])
                    time.sleep(0.2)
                row = {"scenario": sc, "max_gap": gap, "max_size": size, "work_s": statistics.median(times),
                       "runs": times, "requests": statistics.median(reqs)}
                rows.append(row)
                print(f"| {sc} | {gap // 1024} KiB | {size // 2**20} MiB | {row['work_s']:.3f} | "
                      f"{' '.join(f'{t:.2f}' for t in times)} | {row['requests']:.0f} |", flush=True)
    (HERE / "results" / "coalesce-sweep.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
