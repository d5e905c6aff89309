"""build_collection: parse every asset's header concurrently and assemble a collection table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..core.collection import Collection
from ..errors import FetchError, RasterduckError
from ..tiff.header import FIRST_READ, read_header
from ..tiff.model import TiffHeader
from .records import RecordSpec, assemble
from .sources import load_stac_json, specs_from_hrefs, specs_from_stac, specs_from_table

Progress = Callable[[int, int], None]  # (done, total)
# Header reads in flight during a build. A header read is one small request (16 KiB), so the build is
# bound by round trips, not bytes: 100 in flight (as rasteret) reads 400 headers in 4 waves instead of 8.
BUILD_CONCURRENCY = 100


@dataclass
class BuildReport:
    """What a build did: counts, failures, requests and time."""

    records: int = 0
    assets: int = 0
    files: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.records} records, {self.assets} assets ({self.files} files), {len(self.failures)} failures, "
                f"{self.requests} requests, {self.seconds:.2f} s")


def header_fetcher(backend: Any, url: str) -> Callable[..., Any]:
    """A fetch function for the header parser. Speculative reads (allow_short) may run past the end of a
    small file: backends with `read_upto(url, start, length)` answer them in one request; others are
    asked for narrower exact ranges until one fits."""
    upto = getattr(backend, "read_upto", None)

    async def fetch(ranges: Sequence[tuple[int, int]], allow_short: bool = False) -> list[bytes]:
        if not allow_short:
            return list(await backend.read_ranges(url, ranges))
        if upto is not None:
            return [await upto(url, s, n) for s, n in ranges]
        return [await _read_short(backend, url, s, n) for s, n in ranges]

    return fetch


async def _read_short(backend: Any, url: str, start: int, length: int) -> bytes:
    """Read up to `length` bytes at `start` from a backend that only answers exact ranges."""
    size = length
    while size > 16:
        try:
            [data] = await backend.read_ranges(url, [(start, size)])
            return bytes(data)
        except (FetchError, OSError):
            size //= 4
    [data] = await backend.read_ranges(url, [(start, 16)])
    return bytes(data)


async def read_headers(urls: Sequence[str], backend: Any, *, max_concurrent: int = 64,
                       first_read: int = FIRST_READ, progress: Progress | None = None
                       ) -> dict[str, TiffHeader | BaseException]:
    """Parse each distinct URL's header once, concurrently; failures are returned, not raised."""
    unique = list(dict.fromkeys(urls))
    sem = asyncio.Semaphore(max_concurrent)
    done = 0
    out: dict[str, TiffHeader | BaseException] = {}

    async def one(url: str) -> None:
        nonlocal done
        async with sem:
            try:
                out[url] = await read_header(url, header_fetcher(backend, url), first_read=first_read)
            except Exception as exc:
                out[url] = exc if isinstance(exc, RasterduckError) else RasterduckError(f"{type(exc).__name__}: {exc}", url=url)
        done += 1
        if progress is not None:
            progress(done, len(unique))

    await asyncio.gather(*(one(u) for u in unique))
    return out


def _stats_requests(backend: Any) -> int | None:
    stats = getattr(backend, "stats", None)
    if stats is None:
        return None
    return int(getattr(stats, "requests", 0))


async def build_async(specs_or_hrefs: Any, *, backend: Any, max_concurrent: int = BUILD_CONCURRENCY, band_map: Any = None,
                      progress: Progress | None = None, report: BuildReport | None = None,
                      ids: Sequence[str] | None = None, datetimes: Any = None) -> pa.Table:
    """Fetch every header the specs need and assemble the table (hrefs: bands named after samples)."""
    report = report if report is not None else BuildReport()
    t0 = time.perf_counter()
    before = _stats_requests(backend) or 0
    if specs_or_hrefs and isinstance(specs_or_hrefs[0], str):
        hrefs = list(specs_or_hrefs)
        headers = await read_headers(hrefs, backend, max_concurrent=max_concurrent, progress=progress)
        samples = {h: (v.image.samples_per_pixel if isinstance(v, TiffHeader) else 1) for h, v in headers.items()}
        specs = specs_from_hrefs(hrefs, band_map=band_map, ids=ids, datetimes=datetimes, samples=samples)
    else:
        specs = list(specs_or_hrefs)
        urls = [href for s in specs for href, _ in s.assets.values()]
        headers = await read_headers(urls, backend, max_concurrent=max_concurrent, progress=progress)
    table = assemble(specs, headers)
    report.records = len(specs)
    report.assets = sum(len(s.assets) for s in specs)
    report.files = len(headers)
    for rid, errs in zip(table["id"].to_pylist(), table["build_errors"].to_pylist(), strict=True):
        for e in errs or []:
            report.failures.append({"id": rid, **e})
    after = _stats_requests(backend)
    report.requests = (after - before) if after is not None else 0
    report.seconds = time.perf_counter() - t0
    return table


def build_collection(
    hrefs: Sequence[str] | None = None,
    *,
    stac: Any = None,
    table: pa.Table | str | Path | None = None,
    bands: Sequence[str] | Mapping[str, Any] | None = None,
    band_index_map: Mapping[str, int] | None = None,
    href_column: str | None = None,
    ids: Sequence[str] | None = None,
    datetimes: Any = None,
    name: str = "",
    data_source: str = "",
    description: str = "",
    backend: Any = None,
    allow_local: bool | Sequence[str | Path] | None = None,
    max_concurrent: int = BUILD_CONCURRENCY,
    progress: Progress | None = None,
    report: BuildReport | None = None,
) -> Collection:
    """Build a Collection from GeoTIFF hrefs, STAC items (file, dict or list) or a records table.

    `bands`: for hrefs, names of the samples in order (or code -> sample index); for STAC, the asset keys
    to keep (or code -> asset key). Local paths need `allow_local` (True or root folders); by default a
    build from local paths allows exactly the folders of those paths. `max_concurrent`: header requests in
    flight (without `backend`, the build reads through a process-wide backend with that limit).
    """
    from ..io.loop import run_sync

    specs: Any
    if stac is not None:
        base = str(stac) if isinstance(stac, str | Path) else None
        items = load_stac_json(stac, fetch_text=lambda url: _fetch_text(url, backend))
        if isinstance(bands, Mapping):
            specs = specs_from_stac(items, band_map={k: str(v) for k, v in bands.items()}, band_index_map=band_index_map, base_url=base)
        else:
            specs = specs_from_stac(items, bands=bands, band_index_map=band_index_map, base_url=base)
    elif table is not None:
        specs = specs_from_table(table, href_column=href_column, band_index_map=band_index_map)
    elif hrefs is not None:
        hrefs = [str(h) for h in hrefs]
        specs = hrefs
    else:
        raise RasterduckError("build_collection needs hrefs, stac= or table=")
    urls = hrefs if specs and isinstance(specs[0], str) else [h for s in specs for h, _ in s.assets.values()]
    trust_own_paths = stac is None and table is None  # hrefs the caller typed: their folders are allowed
    be, own = (backend, False) if backend is not None else _backend_for(urls or [], allow_local, trust_own_paths,
                                                                        max_concurrent)
    hrefs_only = bool(specs) and isinstance(specs[0], str)
    try:
        tbl = run_sync(build_async(specs, backend=be, max_concurrent=max_concurrent,
                                   band_map=bands if hrefs_only else None, progress=progress, report=report,
                                   ids=ids, datetimes=datetimes))
    finally:
        if own:
            run_sync(be.close())
    return Collection(tbl, name=name, data_source=data_source, description=description)


def _fetch_text(url: str, backend: Any) -> str:
    """A whole small document (STAC JSON) over HTTP through the range backend: one bounded read."""
    from ..io.loop import get_default_backend, run_sync
    from .sources import STAC_MAX_BYTES

    be: Any = backend if backend is not None else get_default_backend()
    data = run_sync(be.read_upto(url, 0, STAC_MAX_BYTES + 1))
    if len(data) > STAC_MAX_BYTES:
        raise RasterduckError(f"STAC document larger than {STAC_MAX_BYTES} bytes", url=url)
    return bytes(data).decode("utf-8")


def _backend_for(urls: Sequence[str], allow_local: bool | Sequence[str | Path] | None, trust_own_paths: bool,
                 max_concurrent: int) -> tuple[Any, bool]:
    """The backend of a build without one, and whether it was made for this build only (close it after):
    the process-wide one with `max_concurrent` requests in flight (its pool is kept for later builds and
    reads), or a backend allowed to read local files."""
    from ..core.outputs import backend_for
    from ..io.backend import DefaultBackend
    from ..io.policy import AccessPolicy, local_path, url_scheme

    local = [u for u in urls if url_scheme(u) in ("", "file")]
    if allow_local is None and (not local or not trust_own_paths):
        return backend_for(None, max_concurrent), False
    if allow_local is None:
        allow_local = sorted({str(local_path(u).expanduser().resolve().parent) for u in local})
    return DefaultBackend(AccessPolicy(allow_local=allow_local), max_concurrent=max_concurrent), True


__all__ = ["BuildReport", "RecordSpec", "build_async", "build_collection", "read_headers"]
