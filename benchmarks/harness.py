"""Running reader processes against a fresh HTTP range server, and checking what they return.

Each run starts tests/httpserver.py (RangeServer) through its command line in its own process (so the
server's CPU is not charged to the reader), with the run's latency, on a fixed port; then spawns the
reader (a fresh interpreter: cold caches, cold connections); then stops the server, whose exit line
gives the requests, bytes and peak requests in flight the run caused.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SERVER_SCRIPT = REPO / "tests" / "httpserver.py"
VENV_PY = Path(os.environ.get("RASTERDUCK_BENCH_PY", sys.executable))
VENV312_PY = Path(os.environ.get("RASTERDUCK_BENCH_PY312", "/work/venv-bench312/bin/python"))


@dataclass(frozen=True)
class Reader:
    """A reader: its script and the interpreter that runs it."""

    name: str
    script: str
    python: Path
    needs_src: bool  # put the repo's src/ on PYTHONPATH
    env: tuple[tuple[str, str], ...] = ()  # extra environment (a script's variant)


READERS = {
    "rasterduck-sql": Reader("rasterduck-sql", "reader_sql.py", VENV_PY, True),
    "rasterduck-sql-raw": Reader("rasterduck-sql-raw", "reader_sql.py", VENV_PY, True,
                                 (("RASTERDUCK_BENCH_SQL_FUNCTION", "load_bands_raw"),)),
    "rasterduck-sql-floor": Reader("rasterduck-sql-floor", "reader_sql.py", VENV_PY, True,
                                   (("RASTERDUCK_BENCH_SQL_FUNCTION", "floor"),)),
    # not timed: a real SQL run that saves its result beside the spec for the floor's runs
    "rasterduck-sql-save": Reader("rasterduck-sql-save", "reader_sql.py", VENV_PY, True,
                                  (("RASTERDUCK_BENCH_SQL_DUMP", "1"),)),
    "rasterduck": Reader("rasterduck", "reader_rasterduck.py", VENV_PY, True),
    "rasterio": Reader("rasterio", "reader_rasterio.py", VENV_PY, False),
    "rasteret": Reader("rasteret", "reader_rasteret.py", VENV312_PY, False),
    "async-tiff": Reader("async-tiff", "reader_asynctiff.py", VENV312_PY, False),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One RangeServer process (tests/httpserver.py CLI) on a fixed port."""

    def __init__(self, root: Path, port: int, latency: float, bandwidth: float | None = None) -> None:
        self.cpu0: float | None = None
        cmd = [str(VENV_PY), str(SERVER_SCRIPT), str(root), "--port", str(port), "--latency", str(latency)]
        if bandwidth:
            cmd += ["--bandwidth", str(bandwidth)]
        for attempt in range(50):
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line.startswith("serving"):
                self.cpu0 = _process_cpu(self.proc.pid)  # its start-up (imports) is not the run's
                return
            self.proc.wait()
            time.sleep(0.1 * (attempt + 1))  # the port may linger a moment after the previous run
        raise RuntimeError(f"the benchmark server did not start on port {port}: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self) -> dict[str, float]:
        """Stop it; the counters of its lifetime and the CPU seconds it used serving."""
        cpu = _process_cpu(self.proc.pid)
        cpu_s = cpu - self.cpu0 if cpu is not None and self.cpu0 is not None else -1.0
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=30)
        m = re.search(r"requests=(\d+) bytes_sent=(\d+) peak_in_flight=(\d+)", err or "")
        if not m:
            return {"requests": -1, "bytes": -1, "peak_in_flight": -1, "cpu_s": cpu_s}
        return {"requests": int(m[1]), "bytes": int(m[2]), "peak_in_flight": int(m[3]), "cpu_s": cpu_s}


def _process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a running process (all threads; /proc, in clock ticks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reader_env(reader: Reader) -> dict[str, str]:
    """Environment of a reader process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GDAL_", "CPL_", "VSI_"))}
    if reader.needs_src:
        env["PYTHONPATH"] = str(REPO / "src")
    env.update(reader.env)
    return env


def reader_available(reader: Reader) -> str | None:
    """None when the reader's interpreter exists, else why it is skipped."""
    if not reader.python.exists():
        return (f"{reader.python} missing; create it with benchmarks/setup_venv.sh "
                "(or point RASTERDUCK_BENCH_PY312 at a Python 3.12 with rasteret, async-tiff, obstore)")
    return None


def cpu_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, threshold: float = 0.15, window: float = 0.5) -> float:
    """Wait (up to `max_wait` s) until other processes use under `threshold` of the cores; returns the
    busy fraction last seen. Other sessions on a shared machine would otherwise add noise to a run."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    while True:
        b0 = cpu_busy_seconds()
        time.sleep(window)
        frac = (cpu_busy_seconds() - b0) / (window * cores)
        if frac < threshold or time.monotonic() >= deadline:
            return frac


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_reader(reader: Reader, spec_path: Path, root: Path, port: int, latency: float, *,
               bandwidth: float | None = None, timeout: float = 900, profile_out: Path | None = None,
               py_spy: Path | None = None, quiet_wait: float = 0.0) -> dict[str, Any]:
    """One cold run: fresh server, fresh reader process; the reader's report plus server counters, and
    how many CPU seconds other processes of the machine took meanwhile (`other_cpu_s`)."""
    missing = reader_available(reader)
    if missing:
        return {"reader": reader.name, "skipped": missing}
    busy_before_run = wait_quiet(quiet_wait) if quiet_wait > 0 else None
    busy0, kids0 = cpu_busy_seconds(), _children_cpu()
    server = Server(root, port, latency, bandwidth)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out_path = Path(tmp.name)
    try:
        cmd = [str(reader.python), str(HERE / reader.script), str(spec_path), str(out_path)]
        if profile_out is not None and py_spy is not None:
            cmd = [str(py_spy), "record", "-r", "250", "-f", "raw", "--threads", "-o", str(profile_out), "--", *cmd]
        cmd.append(repr(time.time()))
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, env=reader_env(reader), capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:  # subprocess.run has killed the reader
            rc, err = -1, f"timeout after {timeout} s: {exc}"
        process_s = time.time() - t0
    finally:
        stats = server.stop()
    other_cpu = (cpu_busy_seconds() - busy0) - (_children_cpu() - kids0)
    try:
        result: dict[str, Any] = json.loads(out_path.read_text()) if out_path.stat().st_size else {}
    except (OSError, json.JSONDecodeError):
        result = {}
    out_path.unlink(missing_ok=True)
    if not result:
        result = {"reader": reader.name, "error": f"exit {rc}: {err[-2000:]}"}
    result["process_s"] = process_s
    result["other_cpu_s"] = max(other_cpu, 0.0)
    result["busy_before_run"] = busy_before_run
    result["server"] = stats
    result["returncode"] = rc
    if rc != 0 and "error" not in result and "skipped" not in result:
        result["error"] = f"exit {rc}: {err[-2000:]}"
    return result


def compare(reference: dict[str, str], got: dict[str, str]) -> dict[str, Any]:
    """How a reader's hashes compare with the reference: ok, and counts of what differs."""
    ref_keys, got_keys = set(reference), set(got)
    mismatched = sorted(k for k in ref_keys & got_keys if reference[k] != got[k])
    missing = sorted(ref_keys - got_keys)
    extra = sorted(got_keys - ref_keys)
    return {"ok": not (mismatched or missing or extra) and bool(ref_keys), "compared": len(ref_keys),
            "mismatched": len(mismatched), "missing": len(missing), "extra": len(extra),
            "examples": (mismatched + missing + extra)[:5]}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the successful runs of one reader on one scenario."""
    good = [r for r in runs if "work_s" in r]
    if not good:
        first = runs[0] if runs else {}
        return {"status": "skipped" if "skipped" in first else "error",
                "reason": first.get("skipped") or first.get("error", "no run")}

    def med(f: Any) -> float:
        return float(statistics.median(f(r) for r in good))

    return {
        "status": "ok", "runs": len(good),
        "wall_s": med(lambda r: r["wall_s"]), "work_s": med(lambda r: r["work_s"]),
        "import_s": med(lambda r: r["import_s"]), "cpu_s": med(lambda r: r.get("cpu_s", 0.0)),
        # CPU seconds of the work alone (without imports), and of the server meanwhile (None: not measured)
        "work_cpu_s": (med(lambda r: r["work_cpu_s"]) if all(r.get("work_cpu_s") is not None for r in good)
                       else None),
        "server_cpu_s": (med(lambda r: r["server"]["cpu_s"])
                         if all(r["server"].get("cpu_s", -1) >= 0 for r in good) else None),
        "session_s": med(lambda r: r.get("session_s", 0.0)),
        "read_s": med(lambda r: r["work_s"] - r.get("session_s", 0.0)),
        "work_s_all": [round(r["work_s"], 4) for r in good], "wall_s_all": [round(r["wall_s"], 4) for r in good],
        "requests": med(lambda r: r["server"]["requests"]), "mb": med(lambda r: r["server"]["bytes"] / 1e6),
        "peak_in_flight": med(lambda r: r["server"]["peak_in_flight"]),
        "rss_peak_mb": max(r["rss_peak_mb"] for r in good),
        "other_cpu_s": max(r.get("other_cpu_s", 0.0) for r in good),
        "contention_max": max(r.get("contention", 0.0) for r in good),
        "attempts": sum(r.get("attempts", 1) for r in good),
        "extra": good[-1].get("extra", {}),
        # medians of the phase times some readers report (the API's open_collection, the floor's lookups)
        "extra_medians": {k: med(lambda r, k=k: r["extra"][k]) for k in ("open_s", "lookup_s")
                          if all(k in r.get("extra", {}) for r in good)},
    }
