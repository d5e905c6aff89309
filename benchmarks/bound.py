"""Lower bounds: what any reader with cached headers must at least spend on a read scenario.

    bound = max(latency x waves + bytes / bandwidth, measured fetch floor) + decode_seconds / cores

- Tile plan, made here independently of rasterduck (rasterio's geometry_window rule on each file's
  grid, tile tables from tifffile on the local files): the unique (file URL, tile) pairs the scenario
  needs and, per tile, the last row any window needs in it. A virtual scene is a distinct object, so
  its tiles count again.
- requests: per file, runs of needed tiles that lie back to back in the file (gaps up to 64 bytes:
  GDAL's per-tile leader/trailer) are one request; waves = ceil(requests / 50), 50 being the default
  number of requests in flight of rasterduck and rasteret (their `max_concurrent`).
- bytes: what those requests must carry: the needed tiles, except that the last tile of each run only
  up to its last needed row (Deflate decodes from the start and can stop there: the smallest prefix
  that inflates to those rows, found here by inflating); bandwidth: measured (see `measure_bandwidth`).
- measured fetch floor: the same requests received by a bare asyncio client (raw sockets, no HTTP
  library, bodies received into preallocated buffers, nothing decoded, 50 keep-alive connections) from
  a fresh server at the scenario's latency, best of 3: the
  formula's bandwidth is measured with 4 long transfers and misses what 32-400 concurrent responses
  cost this server (thread start, latency sleep, sends sharing the cores).
- decode: every needed tile decoded once here, single-threaded, timed as the cheapest of (a) libdeflate
  inflating the whole tile (imagecodecs.deflate_decode) and (b) zlib or ISA-L (python-isal, when
  installed) inflating only the prefix up to the last needed row; plus undoing predictor 2 where reads
  need it: the rows from the first needed row, the columns up to the last needed one (the predictor runs
  along a row from its first column; imagecodecs.delta_decode). Physical
  tiles shared by several virtual files are timed once and counted per file. The full-tile variant
  (libdeflate + predictor on the whole tile) is reported too, as the issue's table does.
"""

from __future__ import annotations

import asyncio
import http.client
import math
import re
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import imagecodecs
import numpy as np
import shapely
import tifffile
from affine import Affine
from pyproj import Transformer
from rasterio.errors import WindowError
from rasterio.features import geometry_window

try:  # the fastest inflate that can stop after the needed rows (what rasterduck uses when installed)
    from isal import isal_zlib as _isal_zlib
except ImportError:
    _isal_zlib = None

CONCURRENCY = 50
BUILD_CONCURRENCY = 64
CONTIGUOUS_GAP = 64


class _Grid:
    def __init__(self, transform: Affine, width: int, height: int) -> None:
        self.transform, self.width, self.height = transform, width, height


def local_path(url: str, root: Path) -> Path:
    """The file a (possibly virtual, /v/<tag>/...) URL serves."""
    path = urlsplit(url).path.lstrip("/")
    if path.startswith("v/"):
        path = path.split("/", 2)[2]
    return root / path


class _FileInfo:
    def __init__(self, path: Path) -> None:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            self.offsets = list(page.dataoffsets)
            self.counts = list(page.databytecounts)
            self.tw, self.th = page.tilewidth, page.tilelength
            self.width, self.height = page.imagewidth, page.imagelength
            self.across = -(-self.width // self.tw)
            # COG layout: every IFD comes before any tile data (level 0's tiles are stored last)
            self.header_bytes = min(int(o) for pg in tf.pages for o in pg.dataoffsets if o > 0)


def tile_plan(spec: dict[str, Any], root: Path) -> dict[str, Any]:
    """Unique needed tiles per URL with the rows each needs, plus request runs and bytes."""
    aois = [shapely.from_wkb(bytes.fromhex(a["wkb"])) for a in spec["aois"]]
    infos: dict[Path, _FileInfo] = {}
    tfs: dict[int, Transformer] = {}
    needed: dict[tuple[str, int], int] = {}  # (url, tile index) -> rows needed
    region: dict[tuple[str, int], tuple[int, int]] = {}  # (url, tile index) -> (first needed row, columns)
    url_files: dict[str, Path] = {}
    for scene_idx, idx in spec["pairs"]:
        scene = spec["scenes"][scene_idx]
        epsg = scene["epsg"]
        t = tfs.setdefault(epsg, Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True))
        aff = Affine(*scene["transform"])
        grid = _Grid(aff, scene["width"], scene["height"])
        windows = []
        for i in idx:
            g = shapely.transform(aois[i], lambda xy, t=t: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
            try:
                w = geometry_window(grid, [g])
            except WindowError:
                continue
            if w.width > 0 and w.height > 0:
                windows.append((int(w.row_off), int(w.col_off), int(w.height), int(w.width)))
        for band in spec["bands"]:
            url = scene["assets"][band]
            path = local_path(url, root)
            url_files[url] = path
            info = infos.get(path) or infos.setdefault(path, _FileInfo(path))
            for r0, c0, h, w in windows:
                for tr in range(r0 // info.th, (r0 + h - 1) // info.th + 1):
                    rows = min(r0 + h, (tr + 1) * info.th, info.height) - tr * info.th
                    first = max(r0 - tr * info.th, 0)
                    for tc in range(c0 // info.tw, (c0 + w - 1) // info.tw + 1):
                        k = (url, tr * info.across + tc)
                        needed[k] = max(needed.get(k, 0), rows)
                        cols = min(c0 + w, (tc + 1) * info.tw) - tc * info.tw
                        f0, c_max = region.get(k, (first, cols))
                        region[k] = (min(f0, first), max(c_max, cols))
    by_url: dict[str, list[int]] = {}
    for url, tile in needed:
        by_url.setdefault(url, []).append(tile)
    ranges: list[tuple[str, int, int]] = []  # (url, start, end): one request each
    for url, tiles in by_url.items():
        info = infos[url_files[url]]
        spans = sorted((info.offsets[t], info.offsets[t] + info.counts[t], t) for t in tiles)
        runs: list[list[tuple[int, int, int]]] = []
        for span in spans:
            if runs and span[0] - runs[-1][-1][1] <= CONTIGUOUS_GAP:
                runs[-1].append(span)
            else:
                runs.append([span])
        for run in runs:
            s_last, e_last, t_last = run[-1]
            cut = s_last + _min_prefix(url_files[url], s_last, e_last - s_last,
                                       needed[(url, t_last)] * info.tw * 2)
            ranges.append((url, run[0][0], cut))
    nbytes = sum(e - s for _u, s, e in ranges)
    return {"needed": needed, "region": region, "infos": infos, "url_files": url_files, "requests": len(ranges), "bytes": nbytes,
            "files": len(by_url), "ranges": ranges}


_PREFIXES: dict[tuple[Path, int, int], int] = {}


def _min_prefix(path: Path, offset: int, length: int, need: int) -> int:
    """The fewest leading bytes of a Deflate tile that inflate to `need` bytes (zlib, which stops there)."""
    key = (path, offset, need)
    if key not in _PREFIXES:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        d = zlib.decompressobj()
        out = d.decompress(data, need)
        _PREFIXES[key] = length if len(out) < need else length - len(d.unconsumed_tail)
    return _PREFIXES[key]


def decode_seconds(plan: dict[str, Any]) -> dict[str, float]:
    """Single-threaded decode time of the needed tiles: needed rows (cheapest way) and full tiles."""
    per_physical: dict[tuple[Path, int, int], tuple[float, float]] = {}
    rows_total = 0
    t_rows = t_full = 0.0
    for (url, tile), rows in plan["needed"].items():
        path = plan["url_files"][url]
        info = plan["infos"][path]
        first, cols = plan["region"][(url, tile)]
        k = (path, tile, rows, first, cols)
        if k not in per_physical:
            with open(path, "rb") as f:
                f.seek(info.offsets[tile])
                data = f.read(info.counts[tile])
            per_physical[k] = _time_tile(data, info.tw, info.th, rows, first, cols)
        a, b = per_physical[k]
        t_rows += a
        t_full += b
        rows_total += rows
    return {"decode_rows_s": t_rows, "decode_full_s": t_full, "tiles": len(plan["needed"]),
            "rows_decoded": rows_total}


def _time_tile(data: bytes, tw: int, th: int, rows: int, first: int, cols: int) -> tuple[float, float]:
    """(needed-rows decode seconds, full-tile decode seconds), best of 3 each. The needed-rows variants
    undo the predictor on rows first..rows and columns ..cols only."""
    row_bytes = tw * 2
    full_buf = np.empty(tw * th * 2, np.uint8)

    def full() -> None:
        raw = imagecodecs.deflate_decode(data, out=full_buf)  # type: ignore[arg-type]
        imagecodecs.delta_decode(np.frombuffer(raw, "<u2").reshape(th, tw), axis=-1, out=None)

    def whole_region() -> None:
        raw = imagecodecs.deflate_decode(data, out=full_buf)  # type: ignore[arg-type]
        imagecodecs.delta_decode(np.frombuffer(raw, "<u2").reshape(th, tw)[first:rows, :cols], axis=-1, out=None)

    def prefix() -> None:
        raw = zlib.decompressobj().decompress(data, rows * row_bytes)
        imagecodecs.delta_decode(np.frombuffer(raw, "<u2").reshape(rows, tw)[first:, :cols], axis=-1, out=None)

    def prefix_isal() -> None:
        raw = _isal_zlib.decompressobj().decompress(data, rows * row_bytes)
        imagecodecs.delta_decode(np.frombuffer(raw, "<u2").reshape(rows, tw)[first:, :cols], axis=-1, out=None)

    def best(fn: Any) -> float:
        out = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            out = min(out, time.perf_counter() - t0)
        return out

    t_full = best(full)
    t_prefix = min(best(whole_region), best(prefix))
    if _isal_zlib is not None:
        t_prefix = min(t_prefix, best(prefix_isal))
    return t_prefix, t_full


def read_bound(spec: dict[str, Any], root: Path, latency: float, bandwidth: float, cores: int,
               fetch_floor: Callable[[list[tuple[str, int, int]]], float] | None = None) -> dict[str, Any]:
    """The lower bound of a read scenario, with its parts.

    `fetch_floor(ranges)`: seconds a bare client needs to receive exactly these requests from the live
    server at the scenario's latency (see `raw_fetch_seconds`); when given, the transfer part of the bound
    is the larger of it and the formula's latency x waves + bytes / bandwidth."""
    plan = tile_plan(spec, root)
    dec = decode_seconds(plan)
    waves = math.ceil(plan["requests"] / CONCURRENCY) if plan["requests"] else 0
    transfer = plan["bytes"] / bandwidth
    formula = latency * waves + transfer
    floor = fetch_floor(plan["ranges"]) if fetch_floor is not None and plan["ranges"] else None
    fetch = max(formula, floor) if floor is not None else formula
    bound = fetch + dec["decode_rows_s"] / cores
    bound_full = fetch + dec["decode_full_s"] / cores
    return {"bound_s": bound, "bound_full_tile_s": bound_full, "requests": plan["requests"], "waves": waves,
            "bytes": plan["bytes"], "transfer_s": transfer, "files": plan["files"], **dec,
            "decode_rows_per_core_s": dec["decode_rows_s"] / cores, "formula_fetch_s": formula,
            "fetch_floor_s": floor, "formula_bound_s": formula + dec["decode_rows_s"] / cores}


class _FloorConnection(asyncio.BufferedProtocol):
    """One keep-alive connection of the fetch-floor client: an asyncio BufferedProtocol that receives each
    body straight into a preallocated buffer (no chunk lists, no joins: the least CPU a client can spend)."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.scratch = bytearray(64 * 1024)
        self.body: bytearray | None = None
        self.got = 0
        self.done: asyncio.Future[None] | None = None
        self.transport: Any = None

    # asyncio.BufferedProtocol interface
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.body is not None:
            return memoryview(self.body)[self.got:]
        return memoryview(self.scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self.body is not None:
            self.got += nbytes
        else:
            self.head += self.scratch[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.head[: self.head.find(b"\r\n")])
            if b" 206 " not in status:
                self._finish(RuntimeError(f"fetch floor: answered {status!r}"))
                return
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", bytes(self.head[:end])).group(1))  # type: ignore[union-attr]
            rest = self.head[end + 4:]
            self.body = bytearray(length)
            self.body[: len(rest)] = rest
            self.got = len(rest)
        if self.body is not None and self.got >= len(self.body):
            self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self.done is not None and not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def eof_received(self) -> bool:
        self._finish(ConnectionError("fetch floor: server closed the connection"))
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._finish(exc or ConnectionError("fetch floor: connection lost"))

    async def get(self, path: str, host: str, start: int, end: int) -> None:
        self.head, self.body, self.got = bytearray(), None, 0
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nRange: bytes={start}-{end - 1}\r\n\r\n".encode())
        await self.done


def raw_fetch_seconds(ranges: list[tuple[str, int, int]], concurrency: int = CONCURRENCY) -> float:
    """Seconds a bare client takes to receive the given requests (url, start, end): `concurrency` keep-alive
    connections, each sending its next request as soon as the previous answer is in, bodies received
    into preallocated buffers (no HTTP library, nothing decoded). What the server and the loopback can
    deliver: the floor under any reader's fetch phase."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, int, int]] = asyncio.Queue()
        for r in ranges:
            queue.put_nowait(r)

        async def worker() -> None:
            conns: dict[tuple[str | None, int | None], _FloorConnection] = {}
            try:
                while not queue.empty():
                    url, start, end = queue.get_nowait()
                    u = urlsplit(url)
                    key = (u.hostname, u.port)
                    if key not in conns:
                        _t, conns[key] = await loop.create_connection(_FloorConnection, u.hostname, u.port)
                    await conns[key].get(u.path, u.netloc, start, end)
            finally:
                for c in conns.values():
                    c.transport.close()

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(ranges)))))

    t0 = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t0


def build_bound(records: list[dict[str, Any]], bands: list[str], root: Path, latency: float, bandwidth: float
                ) -> dict[str, Any]:
    """S4: one request per file (its whole header in one read), 64 in flight, header bytes over the wire."""
    paths = [local_path(r["assets"][b], root) for r in records for b in bands]
    infos: dict[Path, _FileInfo] = {}
    nbytes = 0
    for p in paths:
        info = infos.get(p) or infos.setdefault(p, _FileInfo(p))
        nbytes += info.header_bytes
    waves = math.ceil(len(paths) / BUILD_CONCURRENCY)
    transfer = nbytes / bandwidth
    return {"bound_s": latency * waves + transfer, "requests": len(paths), "waves": waves, "bytes": nbytes,
            "transfer_s": transfer, "files": len(paths)}


def measure_bandwidth(base_url: str, relpath: str, nbytes: int = 16 * 1024 * 1024, parallel: int = 4) -> float:
    """Bytes/s the benchmark server delivers to `parallel` keep-alive connections (latency 0)."""
    u = urlsplit(base_url)

    def pull(_: int) -> int:
        conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
        got = 0
        for _rep in range(2):
            conn.request("GET", "/" + relpath, headers={"Range": f"bytes=0-{nbytes - 1}"})
            resp = conn.getresponse()
            got += len(resp.read())
        conn.close()
        return got

    pull(0)  # warm the page cache
    best = 0.0
    for _ in range(3):  # best of three: the bound wants what the server can do, not a noisy moment
        t0 = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            total = sum(pool.map(pull, range(parallel)))
        best = max(best, total / (time.perf_counter() - t0))
    return best
