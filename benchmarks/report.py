"""The markdown report and the target checks of a benchmark run."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PEERS = ("rasterio", "rasteret", "async-tiff")
LABEL = {"rasterduck-sql": "rasterduck SQL", "rasterduck-sql-raw": "rasterduck SQL raw", "rasterduck": "rasterduck API", "rasterio": "rasterio/GDAL tuned",
         "rasterduck-sql-floor": "DuckDB's share of the SQL read",
         "rasteret": "rasteret", "async-tiff": "async-tiff"}
ORDER = ("rasterduck-sql", "rasterduck-sql-raw", "rasterduck", "rasterio", "rasteret", "async-tiff")
DETAIL_ORDER = ("rasterduck-sql", "rasterduck-sql-raw", "rasterduck", "rasterduck-sql-floor", "rasterio", "rasteret",
                "async-tiff")  # the floor beside the SQL and API rows it explains


def _version(python: str, code: str) -> str:
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or out.stderr.strip().splitlines()[-1]
    except (OSError, subprocess.TimeoutExpired, IndexError) as exc:
        return f"unavailable ({exc})"


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and the versions of everything measured."""
    from harness import VENV312_PY, VENV_PY

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "os": platform.platform(),
        "python": _version(str(VENV_PY), "import sys; print(sys.version.split()[0])"),
        "duckdb": _version(str(VENV_PY), "import duckdb; print(duckdb.__version__)"),
        "rasterio": _version(str(VENV_PY), "import rasterio; print(rasterio.__version__, 'GDAL', rasterio.__gdal_version__)"),
        "python312": _version(str(VENV312_PY), "import sys; print(sys.version.split()[0])"),
        "rasteret": _version(str(VENV312_PY), "import rasteret; print(rasteret.__version__)"),
        "async_tiff": _version(str(VENV312_PY), "import importlib.metadata as m; print(m.version('async-tiff'), 'obstore', m.version('obstore'))"),
    }


def _ok(entry: dict[str, Any], reader: str) -> dict[str, Any] | None:
    r = entry["readers"].get(reader)
    return r if r and r.get("status") == "ok" else None


def _ms(lat: float) -> str:
    return f"{lat * 1000:.0f} ms"


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with PASS/MISS/N/A and the numbers behind it."""
    out: list[dict[str, Any]] = []

    def add(name: str, status: str, detail: str) -> None:
        out.append({"target": name, "status": status, "detail": detail})

    for e in doc["results"]:
        sc, lat = e["scenario"], e["latency"]
        rd = _ok(e, "rasterduck")
        if e["kind"] == "read":
            if rd is None:
                add(f"{sc} @{_ms(lat)}: faster than every peer", "N/A", "rasterduck did not produce checked pixels")
                continue
            done = {p: r for p in PEERS if (r := _ok(e, p)) is not None}
            slower = [p for p, r in done.items() if r["work_s"] <= rd["work_s"]]
            peers = ", ".join(f"{p} {r['work_s']:.2f}" for p, r in done.items())
            add(f"{sc} @{_ms(lat)}: faster than every peer", "MISS" if slower else "PASS",
                f"rasterduck {rd['work_s']:.2f} s vs {peers}")
            b = e["bound"].get("bound_s")
            if b:
                d = rd["work_s"] / b
                add(f"{sc} @{_ms(lat)}: work within 1.3x of the lower bound", "PASS" if d <= 1.3 else "MISS",
                    f"{rd['work_s']:.2f} s / {b:.2f} s = {d:.2f}x" + _cpu_text(rd, doc["cores"], b))
            floor = _ok(e, "rasterduck-sql-floor")
            for reader, what in (("rasterduck-sql", "SQL"), ("rasterduck-sql-raw", "SQL with load_bands_raw")):
                sql = _ok(e, reader)
                if sql is None:
                    continue
                read = sql.get("read_s", sql["work_s"])
                d, d_all = read / rd["work_s"], sql["work_s"] / rd["work_s"]
                add(f"{sc} @{_ms(lat)}: {what} within 10% of the Python API", "PASS" if d <= 1.1 else "MISS",
                    f"SQL read (attach + query) {read:.2f} s / API (open + read) {rd['work_s']:.2f} s = {d:.2f}x; "
                    f"with opening the database ({sql.get('session_s', 0):.3f} s, once per session) "
                    f"{sql['work_s']:.2f} s = {d_all:.2f}x" + (_floor_text(floor, rd) if reader == "rasterduck-sql" else ""))
            if sc == "S2" and "rasteret" in done:
                x = done["rasteret"]["work_s"] / rd["work_s"]
                add(f"S2 @{_ms(lat)}: >= 3x rasteret", "PASS" if x >= 3 else "MISS", f"{x:.2f}x")
            if sc == "S6" and abs(lat - 0.1) < 1e-9 and "rasterio" in done:
                x = done["rasterio"]["work_s"] / rd["work_s"]
                add("S6 @100 ms: >= 3x tuned rasterio", "PASS" if x >= 3 else "MISS", f"{x:.2f}x")
        elif e["kind"] == "build":
            rt = _ok(e, "rasteret")
            if rd and rt:
                r = rt["work_s"] / rd["work_s"]
                add(f"{sc} @{_ms(lat)}: build >= 5x faster than rasteret", "PASS" if r >= 5 else "MISS",
                    f"rasteret {rt['work_s']:.2f} s / rasterduck {rd['work_s']:.2f} s = {r:.2f}x")
        elif e["kind"] == "stream":
            sql = _ok(e, "rasterduck-sql")
            if sql:
                x = sql["extra"]
                add(f"S5 @{_ms(lat)}: peak RSS bounded and stated", "STATED",
                    f"{sql['rss_peak_mb']:.0f} MB peak over {x.get('rows_streamed', '?')} rows "
                    f"({x.get('rss_before_stream_mb', 0):.0f} MB before the stream), {sql['work_s']:.1f} s")
            else:
                r = e["readers"].get("rasterduck-sql", {})
                add(f"S5 @{_ms(lat)}: peak RSS bounded and stated", "N/A", str(r.get("reason", "not run"))[:200])
    return out


def _cpu_text(rd: dict[str, Any], cores: int, bound: float) -> str:
    """What the CPU the read used (its own work and the server's) allows on these cores, next to the bound."""
    work, server = rd.get("work_cpu_s"), rd.get("server_cpu_s")
    if work is None or server is None:
        return ""
    floor = (work + server) / cores
    return (f". CPU: the read used {work:.3f} s and the server {server:.3f} s; spread over {cores} cores with none "
            f"idle that is {floor:.3f} s ({floor / bound:.2f}x the bound), the least this run's work could take. "
            f"The other {max(rd['work_s'] - floor, 0.0):.3f} s of the work ran with a core idle (waiting on the "
            f"network, or on one thread)")


def _floor_text(floor: dict[str, Any] | None, api: dict[str, Any]) -> str:
    """The SQL target's budget next to DuckDB's own share of the read (the floor reader)."""
    if floor is None:
        return ""
    share = floor.get("read_s", floor["work_s"]) - floor.get("extra_medians", {}).get("lookup_s", 0.0)
    opened = api.get("extra_medians", {}).get("open_s")
    budget = 0.1 * api["work_s"] + (opened or 0.0)
    return (f". DuckDB's own share of it (attach + the same query with a UDF handing back a saved result, "
            f"its lookups taken out): {share:.3f} s = {share / api['work_s']:.0%} of the API's time. With the UDF "
            f"reading as fast as the API does once the collection is open, SQL is within 10 % only if that share "
            f"is at most 10 % of the API's time"
            + (f" plus the API's open_collection ({opened:.3f} s), which the SQL read does not repeat"
               if opened is not None else "")
            + f": {budget:.3f} s, so it is {'within' if share <= budget else 'over'} that budget")


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if r.get("status") == "ok":
        return f"{r['work_s']:.2f} ({r['wall_s']:.2f})"
    if r.get("status") == "unchecked":
        return f"~~{r['work_s']:.2f}~~ unchecked"
    if r.get("status") == "pixels differ":
        return f"~~{r['work_s']:.2f}~~ pixels differ"
    return r.get("status", "-")


def markdown(doc: dict[str, Any]) -> str:
    """The full report: summary, details, bounds, targets, profile, machine."""
    m = doc["machine"]
    lay = doc["layout"]
    cr = doc["compression_ratio_level0"]
    lines = [
        f"# rasterduck benchmark ({'quick smoke test' if doc['quick'] else 'full'}), {doc['stamp']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}. "
        f"Python {m['python']} (duckdb {m['duckdb']}, rasterio {m['rasterio']}); Python {m['python312']} for "
        f"rasteret {m['rasteret']} and async-tiff {m['async_tiff']}.",
        f"Data: 8 scenes x 4 bands, {lay['size']}x{lay['size']} uint16 COGs (1024 tiles, DEFLATE+pred 2, overviews), "
        f"{doc['data_bytes'] / 1e9:.2f} GB; full-resolution compressed/raw {cr['min']:.2f}-{cr['max']:.2f} "
        f"(mean {cr['mean']:.2f}). Server: tests/httpserver.py in its own process, loopback, "
        f"{doc['bandwidth_Bps'] / 1e6:.0f} MB/s measured. {doc['runs']} cold run(s) per cell (fresh server and process), median.",
        "",
        "Seconds of work (imports excluded) with wall seconds (process start to pixels in memory) in parentheses. "
        "A time counts only when the reader's pixels equal rasterio/GDAL's for every AOI x scene x band. "
        "The SQL reader's work includes opening the database (`rasterduck.connect()`: DuckDB's own start and "
        "registering the functions, once per session; its own column in the details); the SQL-vs-API target "
        "compares without it.",
        "",
        "| scenario | latency | " + " | ".join(LABEL[r] for r in ORDER) + " | lower bound | rasterduck / bound |",
        "|---|---|" + "---|" * len(ORDER) + "---|---|",
    ]
    for e in doc["results"]:
        b = e["bound"].get("bound_s")
        rd = _ok(e, "rasterduck")
        dist = f"{rd['work_s'] / b:.2f}x" if (b and rd) else "-"
        cells = " | ".join(_cell(e["readers"].get(r)) for r in ORDER)
        bcell = f"{b:.2f}" if b else "-"
        lines.append(f"| {e['scenario']} | {_ms(e['latency'])} | {cells} | {bcell} | {dist} |")
    summary_end = len(lines)
    lines += ["", "## Details", "",
              "Runs: work s of each run. CPU s: the reader process's user+system seconds up to the end of its work; "
              "work CPU s: the same without its imports; server CPU s: what the server process used meanwhile. "
              "Other CPU s: the most CPU seconds other processes of the machine (not the reader, not the server) "
              "used during one kept run of the cell: noise from a shared machine; a run during which they took over "
              "10 % of the cores is repeated (up to twice) and the least contended attempt kept (attempts column).", "",
              "| scenario | latency | reader | work s | wall s | runs | attempts | import s | session s | CPU s | work CPU s | server CPU s | other CPU s | requests | peak in flight | MB | peak RSS MB | pixels | peer work / rasterduck work |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in doc["results"]:
        rd = _ok(e, "rasterduck")
        for rname in DETAIL_ORDER:
            r = e["readers"].get(rname)
            if r is None:
                continue
            if r.get("status") not in ("ok", "pixels differ"):
                lines.append(f"| {e['scenario']} | {_ms(e['latency'])} | {LABEL[rname]} | {r.get('status')}: "
                             f"{str(r.get('reason', ''))[:160]} | | | | | | | | | | | | | | | |")
                continue
            chk = r.get("check", {})
            pix = (f"ok ({chk.get('compared', 0)})" if chk.get("ok") else
                   f"DIFFER: {chk.get('mismatched')} differ, {chk.get('missing')} missing, {chk.get('extra')} extra")
            if rname == "rasterduck":
                others = {p: o for p in ORDER if p != "rasterduck" and (o := _ok(e, p)) is not None}
                ratio = ", ".join(f"{LABEL[p]} {o['work_s'] / r['work_s']:.2f}x" for p, o in others.items())
            elif rd is not None and r.get("status") == "ok":
                ratio = f"{r['work_s'] / rd['work_s']:.2f}x"
            else:
                ratio = "-"
            runs_s = " ".join(f"{x:.2f}" for x in r.get("work_s_all", []))
            lines.append(f"| {e['scenario']} | {_ms(e['latency'])} | {LABEL[rname]} | {r['work_s']:.3f} | {r['wall_s']:.3f} | "
                         f"{runs_s} | {r.get('attempts', '-')} | {r['import_s']:.2f} | {r.get('session_s', 0):.3f} | {r['cpu_s']:.2f} | "
                         f"{_opt(r.get('work_cpu_s'))} | {_opt(r.get('server_cpu_s'))} | {r.get('other_cpu_s', 0):.1f} | "
                         f"{r['requests']:.0f} | {r['peak_in_flight']:.0f} | "
                         f"{r['mb']:.1f} | {r['rss_peak_mb']:.0f} | {pix} | {ratio} |")
    lines += ["", "## Lower bounds", "",
              "bound = max(latency x waves + bytes / bandwidth, measured fetch floor) + decode / cores (see benchmarks/bound.py). "
              "Measured fetch floor: the scenario's requests received by a bare asyncio client (raw sockets, no HTTP "
              "library, nothing decoded, 50 keep-alive connections) from a fresh server at the same latency, best of 3; the formula alone "
              "(its bandwidth measured with 4 long transfers) is shown too, with our distance to it. The tiles any reader "
              "with cached headers must fetch (planned independently with rasterio's window rule and tifffile's tile "
              "tables), requests = runs of back-to-back tiles per file, waves = ceil(requests / 50); MB: those runs, the last "
              "tile of each cut after its last needed row (the smallest prefix that inflates to those rows: what must be "
              "fetched and decoded; the fetch floor receives exactly these ranges); decode timed here, "
              "single-threaded, per needed tile as the cheapest of libdeflate on the whole tile and zlib or ISA-L stopped at "
              "the last needed row, plus predictor 2 where reads use it (from the first needed row, up to the last needed column). "
              "The full-tile column decodes every tile completely. "
              "S4: one request per file holding its whole header, 64 in flight.", "",
              "| scenario | latency | files | tiles | rows decoded | requests | waves | MB | transfer s | latency x waves + transfer s | measured fetch floor s | decode needed rows / cores s | decode full tiles / cores s | bound s | bound (full-tile decode) s | formula-only bound s | rasterduck work s | distance | distance to formula-only |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cores = doc["cores"]
    for e in doc["results"]:
        b = e["bound"]
        if not b:
            continue
        rd = _ok(e, "rasterduck")
        w = f"{rd['work_s']:.2f}" if rd else "-"
        dist = f"{rd['work_s'] / b['bound_s']:.2f}x" if rd else "-"
        if e["kind"] == "read":
            floor = b.get("fetch_floor_s")
            formula_fetch = b.get("formula_fetch_s", e["latency"] * b["waves"] + b["transfer_s"])
            formula_bound = b.get("formula_bound_s", b["bound_s"])
            dist_formula = f"{rd['work_s'] / formula_bound:.2f}x" if rd else "-"
            lines.append(f"| {e['scenario']} | {_ms(e['latency'])} | {b['files']} | {b['tiles']} | {b['rows_decoded']} | "
                         f"{b['requests']} | {b['waves']} | {b['bytes'] / 1e6:.1f} | {b['transfer_s']:.3f} | "
                         f"{formula_fetch:.3f} | {'-' if floor is None else f'{floor:.3f}'} | "
                         f"{b['decode_rows_s'] / cores:.3f} | {b['decode_full_s'] / cores:.3f} | {b['bound_s']:.3f} | "
                         f"{b['bound_full_tile_s']:.3f} | {formula_bound:.3f} | {w} | {dist} | {dist_formula} |")
        else:
            lines.append(f"| {e['scenario']} | {_ms(e['latency'])} | {b['files']} | - | - | {b['requests']} | {b['waves']} | "
                         f"{b['bytes'] / 1e6:.2f} | {b['transfer_s']:.3f} | {b['bound_s']:.3f} | - | - | - | {b['bound_s']:.3f} | "
                         f"- | {b['bound_s']:.3f} | {w} | {dist} | {dist} |")
    targets_block = ["", "### Targets", "", "| target | status | numbers |", "|---|---|---|"]
    targets_block += [f"| {t['target']} | **{t['status']}** | {t['detail']} |" for t in doc["targets"]]
    lines += targets_block
    for p in doc.get("profiles") or []:
        lines += ["", f"## Profile: {p.get('scenario')} / {p.get('reader')} @{_ms(p.get('latency', 0))}", "",
                  f"py-spy, 250 Hz, all threads, idle excluded; {p.get('samples', 0)} samples; raw stacks in "
                  f"benchmarks/{p.get('file')}. Work {p.get('work_s') or 0:.2f} s, wall {p.get('wall_s') or 0:.2f} s "
                  "(under the profiler). Samples are thread-seconds x 250: two busy threads give 500 per second.", "",
                  "| where (all threads) | samples | thread-seconds |", "|---|---|---|"]
        for b, n in p.get("buckets", []):
            lines.append(f"| {b} | {n} | {n / 250:.2f} |")
        lines += ["", "| thread (after imports) | samples |", "|---|---|"]
        for t, n in p.get("threads", []):
            lines.append(f"| {t} | {n} |")
        lines += ["", "| function (self, after imports) | samples |", "|---|---|"]
        for f, n in p.get("self", [])[:15]:
            lines.append(f"| `{f}` | {n} |")
        lines += ["", "| function (inclusive, after imports) | samples |", "|---|---|"]
        for f, n in p.get("inclusive", [])[:20]:
            lines.append(f"| `{f}` | {n} |")
    setup_fail = {k: v for k, v in doc.get("setup", {}).items() if not v["ok"]}
    if setup_fail:
        lines += ["", "Setup failures: " + "; ".join(f"{k}: {str(v['error'])[:200]}" for k, v in setup_fail.items())]
    lines += ["", f"Total harness time {doc['seconds']:.0f} s; generated {dt.datetime.now().isoformat(timespec='seconds')}."]
    doc["_summary_lines"] = lines[:summary_end] + targets_block
    return "\n".join(lines) + "\n"


def readme_block(doc: dict[str, Any]) -> str:
    """What README.md shows: machine, summary table and targets of the latest full run."""
    lines = list(doc.get("_summary_lines") or [])
    if lines and lines[0].startswith("# "):
        lines[0] = "Run " + lines[0][2:] + " (details: results/latest.md)"
    return "\n".join(lines)
