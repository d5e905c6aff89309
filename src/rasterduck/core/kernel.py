"""The engine-neutral Arrow kernel behind every SQL surface: DuckDB's UDFs, Spark's UDFs and bulk jobs.

In: one batch of rows as Arrow arrays -- collection records (the row STRUCT), AOIs (WKB, WKT text, or a
`{srid, wkb}` struct like Spark's GEOMETRY), band lists. Out: the result column as Arrow, built from flat
NumPy arrays and list offsets. A batch is planned as a whole (one `read_batch` per call), so a tile that
several rows need is fetched and decoded once. Engines only adapt arguments and result types.

Calls share a `KernelContext`: backend, metadata cache, cache of AOIs moved into raster CRSs, pixel
budget and how to run a coroutine. DuckDB's registration state is one; `process_kernel()` gives the one
of a worker process for engines without their own (one background event loop and one HTTP session per
process, from io.loop).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeAlias, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import BandNotFoundError, CollectionError, GeometryError, RasterduckError
from ..gcpause import without_gc
from . import arrowbuild as ab
from .bands import candidates
from .geometry import to_shapely, transform_geometry, wkb_array_to_shapely
from .metadata import CogMetadata
from .rasterize import geometry_mask
from .read import DEFAULT_PIXEL_BUDGET, BandSource, ReadRequest, ReadResult, read_batch
from .schema import record_crs

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
Row: TypeAlias = ReadResult | BaseException | None
OnError: TypeAlias = Literal["raise", "null"]
CrsArg: TypeAlias = str | int | Sequence[str | int | None] | pa.Array | pa.ChunkedArray | None
BandsArg: TypeAlias = str | Sequence[str] | pa.Array | pa.ChunkedArray
AOI_CRS = "EPSG:4326"
METADATA_SUFFIX = "_metadata"
_UNSET: Any = object()

# ---- the pixel type rule ---------------------------------------------------------------------------
PIXEL_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
DEFAULT_PIXEL_DTYPE = "float64"


def pixel_dtype(dtype: str | np.dtype) -> str:
    """The canonical NumPy name of a band dtype a result can carry ('float16' widens to 'float32')."""
    dt = np.dtype(dtype)
    if dt == np.float16:
        return "float32"
    if dt.kind == "b":
        return "uint8"
    if dt.name not in PIXEL_DTYPES:
        raise TypeError(f"no pixel type for dtype {dt.name!r}")
    return dt.name


def promote(dtypes: Iterable[str]) -> str:
    """The one pixel dtype for a set of band dtypes (NumPy promotion; none -> float64).

    A result column's type is fixed before any row is read, so it must hold every band's values."""
    names = sorted({pixel_dtype(d) for d in dtypes})
    if not names:
        return DEFAULT_PIXEL_DTYPE
    out = np.result_type(*[np.dtype(n) for n in names])
    return pixel_dtype(out) if out.name in PIXEL_DTYPES else DEFAULT_PIXEL_DTYPE


def band_dtypes(table: pa.Table | pa.RecordBatch) -> set[str]:
    """The distinct `dtype`s of every `{band}_metadata` column of a collection table."""
    out: set[str] = set()
    for i, f in enumerate(table.schema):
        if f.name.endswith(METADATA_SUFFIX) and pa.types.is_struct(f.type) and f.type.get_field_index("dtype") >= 0:
            vals = pc.unique(pc.struct_field(table.column(i), "dtype")).to_pylist()
            out |= {str(v) for v in vals if v}
    return out


# ---- caches ----------------------------------------------------------------------------------------
class Lru(Generic[K, T]):
    """A small thread-safe LRU map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> T | None:
        """The cached value or None (marks the entry as recently used)."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: T) -> None:
        """Store one entry, evicting the least recently used beyond `size`."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class MetadataCache(Lru[tuple[str, str, str, str | None], CogMetadata]):
    """Parsed band metadata keyed by (record id, band, href, crs): a join repeats records in every batch."""

    def __init__(self, size: int = 8192) -> None:
        super().__init__(size)


# ---- records -------------------------------------------------------------------------------------
def combine(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous Arrow array from an argument (DuckDB passes ChunkedArrays, Spark Arrays)."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return values.chunk(0)
        return values.combine_chunks()
    return values


@dataclass
class _BandColumns:
    """Where one band code lives in this batch's struct: its asset and metadata columns."""

    code: str
    asset_key: str
    meta: pa.StructArray
    hrefs: list[str | None]  # None where the asset or its metadata is missing
    indexes: list[int | None]


def _names(t: pa.DataType) -> list[str]:
    return [t.field(i).name for i in range(t.num_fields)]


class ChunkRecords:
    """The records of one call: ids, CRSs and, on demand, band sources per row.

    Band codes are resolved once per struct type, only the requested `{band}_metadata` values are read,
    and each (record id, band, href, CRS) is parsed once per cache."""

    def __init__(self, records: pa.ChunkedArray | pa.Array, cache: MetadataCache,
                 data_sources: Iterable[str] = ()) -> None:
        arr = combine(records)
        if not pa.types.is_struct(arr.type):
            raise CollectionError(f"the record argument must be a collection row (STRUCT), got {arr.type}; "
                                  "pass the row alias, e.g. load_bands(r, ...) FROM collection r")
        self.arr: pa.StructArray = arr
        self.names = _names(arr.type)
        self.cache = cache
        n = len(arr)
        self.valid: list[bool] = arr.is_valid().to_pylist()
        if "id" in self.names:
            self.ids: list[str] = [str(v) if v is not None else f"row{i}" for i, v in
                                   enumerate(arr.field("id").to_pylist())]
        else:
            self.ids = [f"row{i}" for i in range(n)]
        epsg = arr.field("proj:epsg").to_pylist() if "proj:epsg" in self.names else [None] * n
        crs = arr.field("crs").to_pylist() if "crs" in self.names else [None] * n
        self.crs: list[str | None] = [str(c) if c else None for c in map(record_crs, epsg, crs)]
        sources = list(dict.fromkeys(data_sources))
        if "collection" in self.names:
            sources = [str(v) for v in dict.fromkeys(arr.field("collection").to_pylist()) if v] + sources
        self.data_sources = [*sources, ""]
        self._bands: dict[str, _BandColumns | None] = {}
        self._sources: dict[tuple[Any, ...], list[BandSource]] = {}

    def __len__(self) -> int:
        return len(self.arr)

    def band_codes(self) -> list[str]:
        """Band codes with a `{band}_metadata` column, in column order."""
        return [n[: -len(METADATA_SUFFIX)] for n in self.names if n.endswith(METADATA_SUFFIX)]

    def _columns(self, code: str) -> _BandColumns | None:
        if code in self._bands:
            return self._bands[code]
        found: _BandColumns | None = None
        if "assets" in self.names:
            assets = self.arr.field("assets")
            keys = _names(assets.type)
            tried: list[str] = []
            for ds in self.data_sources:
                for key in candidates(code, ds):
                    if key in tried:
                        continue
                    tried.append(key)
                    meta_col = next((c + METADATA_SUFFIX for c in (code, key) if c + METADATA_SUFFIX in self.names), None)
                    if key not in keys or meta_col is None:
                        continue
                    asset = assets.field(key)
                    asset_names = _names(asset.type)
                    hrefs = asset.field("href").to_pylist() if "href" in asset_names else [None] * len(asset)
                    idx = asset.field("band_index").to_pylist() if "band_index" in asset_names else [0] * len(asset)
                    meta = self.arr.field(meta_col)
                    valid = pc.and_(pc.and_(asset.is_valid(), assets.is_valid()), meta.is_valid()).to_pylist()
                    hrefs = [h if ok else None for h, ok in zip(hrefs, valid, strict=True)]
                    found = _BandColumns(code, key, meta, hrefs, idx)
                    break
                if found is not None:
                    break
        self._bands[code] = found
        return found

    def sources_many(self, rows: Sequence[int], codes: Sequence[Sequence[str]]
                     ) -> list[list[BandSource] | RasterduckError]:
        """Per row, the BandSources of its bands (`source` for each), or the error. Rows of one record with the
        same hrefs and bands share one list (a join repeats each record for many AOIs), and the band
        metadata the cache lacks is converted from Arrow a run of rows at a time: S6's 400 band records
        took 21 ms one Arrow scalar at a time, ~3 ms in runs."""
        keys: list[tuple[Any, ...]] = []
        firsts: dict[tuple[Any, ...], int] = {}
        last: Sequence[str] | None = None
        wanted_key: tuple[str, ...] = ()
        cols: list[_BandColumns | None] = []
        for i, wanted in zip(rows, codes, strict=True):
            if wanted is not last:  # band_lists shares one list among the rows asking the same bands
                last, wanted_key = wanted, tuple(wanted)
                cols = [self._columns(c) for c in wanted]
            key = (self.ids[i], self.crs[i], wanted_key,
                   tuple([(c.hrefs[i], c.indexes[i]) if c is not None else None for c in cols]))
            keys.append(key)
            if key not in self._sources:
                firsts.setdefault(key, i)
        self._convert(firsts)
        found: dict[tuple[Any, ...], list[BandSource] | RasterduckError] = {}
        for key, i in firsts.items():
            try:
                found[key] = self._sources[key] = [self.source(i, c) for c in key[2]]
            except RasterduckError as exc:
                found[key] = exc
        return [self._sources.get(k) or found[k] for k in keys]

    def _convert(self, firsts: dict[tuple[Any, ...], int]) -> None:
        """Parse into the cache the band metadata of these rows (sources keys -> row) that it lacks, each
        band column in runs of consecutive rows (one zero-copy slice each; Arrow's `take` costs ~150 ms
        on first use). Failures are left to `source`, which names the record."""
        todo: dict[str, dict[int, tuple[Any, ...]]] = {}
        for (rid, crs, wanted, _hrefs), i in firsts.items():
            for code in wanted:
                cols = self._columns(code)
                href = cols.hrefs[i] if cols is not None else None
                if href is None:
                    continue
                ckey = (rid, code, href, crs)
                if self.cache.get(ckey) is None:
                    todo.setdefault(code, {})[i] = ckey
        for code, by_row in todo.items():
            cols = self._columns(code)
            assert cols is not None
            items = sorted(by_row.items())
            k = 0
            while k < len(items):
                end = k + 1
                while end < len(items) and items[end][0] == items[end - 1][0] + 1:
                    end += 1
                dicts = cols.meta.slice(items[k][0], end - k).to_pylist()
                for (_i, ckey), d in zip(items[k:end], dicts, strict=True):
                    try:
                        self.cache.put(ckey, CogMetadata.from_dict(d, crs=ckey[3]))
                    except CollectionError:
                        continue
                k = end

    def source(self, row: int, code: str) -> BandSource:
        """The BandSource of band `code` of row `row`; BandNotFoundError when the record lacks it."""
        cols = self._columns(code)
        rid = self.ids[row]
        href = cols.hrefs[row] if cols is not None else None
        if cols is None or href is None:
            raise BandNotFoundError(f"band {code!r} not found (bands: {self.band_codes()})", record_id=rid, band=code)
        crs = self.crs[row]
        key = (rid, code, href, crs)
        meta = self.cache.get(key)
        if meta is None:
            try:
                meta = CogMetadata.from_dict(cols.meta[row].as_py(), crs=crs)
            except CollectionError as exc:
                raise exc.with_context(record_id=rid, band=code, url=href) from None
            self.cache.put(key, meta)
        return BandSource(code, meta, href, int(cols.indexes[row] or 0))

    def ordered_bands(self, row: int) -> list[str]:
        """Bands present in this row in raster order (Sedona's 1-based band numbers index this list):
        column order, except that bands sharing one file follow their sample index."""
        if not self.valid[row]:
            return []
        present = []
        for pos, code in enumerate(self.band_codes()):
            cols = self._columns(code)
            if cols is None or cols.hrefs[row] is None or not cols.meta[row].is_valid:
                continue
            present.append((pos, code, cols.hrefs[row], int(cols.indexes[row] or 0)))
        first_pos: dict[str, int] = {}
        for pos, _code, href, _idx in present:
            first_pos.setdefault(str(href), pos)
        present.sort(key=lambda p: (first_pos[str(p[2])], p[3], p[0]))
        return [p[1] for p in present]

    def band_by_number(self, row: int, band: object) -> str:
        """A band given as a code (text) or Sedona's 1-based number, as a code."""
        if isinstance(band, str):
            return band
        order = self.ordered_bands(row)
        n = int(band)  # type: ignore[call-overload]
        if not 1 <= n <= len(order):
            raise BandNotFoundError(f"band number {n} out of range: the record has {len(order)} band(s) {order}",
                                    record_id=self.ids[row])
        return order[n - 1]

    def footprints(self) -> list[bytes | None]:
        """The record footprints (WKB, CRS84) from the `geometry` column, None where missing."""
        if "geometry" not in self.names:
            return [None] * len(self)
        return self.arr.field("geometry").to_pylist()  # type: ignore[no-any-return]

    def bboxes(self) -> list[tuple[float, float, float, float] | None]:
        """The record bboxes (CRS84) from the `bbox` struct, None where missing."""
        if "bbox" not in self.names:
            return [None] * len(self)
        out: list[tuple[float, float, float, float] | None] = []
        for b in self.arr.field("bbox").to_pylist():
            if b is None or any(b.get(k) is None for k in ("xmin", "ymin", "xmax", "ymax")):
                out.append(None)
            else:
                out.append((float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"])))
        return out


# ---- arguments -------------------------------------------------------------------------------------
Geom: TypeAlias = BaseGeometry | RasterduckError | None


def _geometry_values(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, list[str | None] | None]:
    """The WKB/WKT array of an AOI argument and, for `{srid, wkb}` structs (Spark GEOMETRY), each CRS."""
    arr = combine(values)
    if not pa.types.is_struct(arr.type):
        return arr, None
    names = _names(arr.type)
    if "wkb" not in names:
        raise GeometryError(f"an AOI struct needs a `wkb` field, got {arr.type}")
    wkb = arr.field("wkb")
    if arr.null_count:
        wkb = pc.if_else(arr.is_valid(), wkb, pa.nulls(len(arr), wkb.type))
    srids = arr.field("srid").to_pylist() if "srid" in names else [None] * len(arr)
    return wkb, [f"EPSG:{int(s)}" if s else None for s in srids]


def parse_geoms(values: pa.Array | pa.ChunkedArray) -> list[Geom]:
    """AOIs of one call (WKB, WKT text, or a {srid, wkb} struct); a bad entry becomes its GeometryError."""
    arr, _srids = _geometry_values(values)
    try:
        return list(wkb_array_to_shapely(arr))
    except GeometryError:
        out: list[Geom] = []
        for v in arr.to_pylist():
            try:
                out.append(to_shapely(v) if v is not None else None)
            except GeometryError as exc:
                out.append(exc)
        return out


def geometry_crs_values(geometry_crs: CrsArg, n: int, geoms: pa.Array | pa.ChunkedArray | None = None
                        ) -> list[str]:
    """The AOI CRS of each row: `geometry_crs` (one value or one per row, text or EPSG number); where that
    is NULL, the SRID of a GEOMETRY struct AOI, else EPSG:4326."""
    srids = _geometry_values(geoms)[1] if geoms is not None else None
    if geometry_crs is None or isinstance(geometry_crs, str | int):
        given: list[Any] = [geometry_crs] * n
    elif isinstance(geometry_crs, pa.Array | pa.ChunkedArray):
        given = combine(geometry_crs).to_pylist()
    else:
        given = list(geometry_crs)
    if len(given) != n:
        raise RasterduckError(f"geometry_crs has {len(given)} values for {n} rows")
    out = []
    for i, v in enumerate(given):
        if v is None:
            out.append((srids[i] if srids is not None else None) or AOI_CRS)
        elif isinstance(v, int | float):
            out.append(f"EPSG:{int(v)}")
        else:
            out.append(str(v))
    return out


def band_lists(values: BandsArg, n: int | None = None) -> list[list[str] | None]:
    """The bands argument per row: a list array, a text array (one band), or one list for all `n` rows.
    Rows asking for the same bands share one list object (read-only), so per-row work can key on it."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, pa.Array | pa.ChunkedArray):
        if n is None:
            raise TypeError("band_lists needs the row count for a constant band list")
        return [[str(v) for v in values]] * n
    arr = combine(values)
    rows: list[Any] = arr.to_pylist()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        rows = [[v] if v is not None else None for v in rows]
    shared: dict[tuple[str, ...], list[str]] = {}
    return [None if v is None else shared.setdefault(tuple(v), v) for v in rows]


# ---- context ---------------------------------------------------------------------------------------
class KernelContext(Protocol):
    """What the calls of one surface share (DuckDB's `State` is one, `Kernel` another)."""

    cache: MetadataCache
    pixel_budget: int | None

    @property
    def backend(self) -> Any: ...

    def run(self, coro: Coroutine[Any, Any, T]) -> T: ...

    def geometry_in(self, geom: Any, src: str, dst: str) -> Any: ...

    def data_sources(self) -> list[str]: ...


class Kernel:
    """A KernelContext of its own: for Spark workers, scripts and tests (see `process_kernel`)."""

    def __init__(self, *, allow_local: bool | Sequence[str] = False, backend: Any = None,
                 pixel_budget: int | None = DEFAULT_PIXEL_BUDGET, max_concurrent: int | None = None,
                 data_sources: Sequence[str] = ()) -> None:
        self.allow_local = allow_local if isinstance(allow_local, bool) else tuple(str(p) for p in allow_local)
        self.pixel_budget = pixel_budget
        self.max_concurrent = max_concurrent
        self.cache = MetadataCache()
        self._moved: Lru[tuple[bytes, str, str], BaseGeometry] = Lru(4096)
        self._sources = list(data_sources)
        self._backend = backend
        self._lock = threading.Lock()

    @property
    def backend(self) -> Any:
        """The range backend: the given one, the process default (remote only), or one with this policy."""
        with self._lock:
            if self._backend is None:
                from ..io.loop import get_default_backend, register_closer

                if self.allow_local is False and self.max_concurrent is None:
                    self._backend = get_default_backend()
                else:
                    from ..io.backend import DEFAULT_MAX_CONCURRENT, DefaultBackend
                    from ..io.policy import AccessPolicy

                    local = self.allow_local if isinstance(self.allow_local, bool) else list(self.allow_local)
                    self._backend = DefaultBackend(AccessPolicy(allow_local=local),
                                                   max_concurrent=self.max_concurrent or DEFAULT_MAX_CONCURRENT)
                    register_closer(self._backend.close)
            return self._backend

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the process's background loop and wait for it."""
        from ..io.loop import run_sync

        return run_sync(coro)

    def geometry_in(self, geom: Any, src: str, dst: str) -> Any:
        """`geom` moved from `src` to `dst`, cached by (WKB, src, dst): joins repeat each AOI per record."""
        if src == dst:
            return geom
        key = (geom.wkb, src, dst)
        hit = self._moved.get(key)
        if hit is None:
            hit = transform_geometry(geom, src, dst)
            self._moved.put(key, hit)
        return hit

    def data_sources(self) -> list[str]:
        """Data sources whose band aliases resolve codes (e.g. 'sentinel-2-l2a': B04 <-> red)."""
        return list(self._sources)


_KERNELS: dict[tuple[Any, ...], Kernel] = {}
_KERNELS_LOCK = threading.Lock()


def process_kernel(*, allow_local: bool | Sequence[str] = False, max_concurrent: int | None = None,
                   data_sources: Sequence[str] = ()) -> Kernel:
    """The kernel of this process for these settings, created once (per pid: forked workers get their own),
    so every call of a worker shares one metadata cache and one HTTP session."""
    local = allow_local if isinstance(allow_local, bool) else tuple(str(p) for p in allow_local)
    key = (os.getpid(), local, max_concurrent, tuple(data_sources))
    with _KERNELS_LOCK:
        k = _KERNELS.get(key)
        if k is None:
            k = _KERNELS[key] = Kernel(allow_local=local if isinstance(local, bool) else list(local),
                                       max_concurrent=max_concurrent, data_sources=data_sources)
        return k


# ---- reading ---------------------------------------------------------------------------------------
def read_pairs(ctx: KernelContext, recs: ChunkRecords, geoms: Sequence[Geom], bands: Sequence[Sequence[str] | None],
               crs: Sequence[str | None], *, all_touched: bool = False, pixel_budget: int | None = _UNSET,
               packed: bool = False) -> list[Row]:
    """One read_batch over every (record, AOI, bands) row of the call; per row a result, None or error.

    Rows with a NULL record, AOI or band list give None (SQL NULL); a `crs` entry of None means the AOI is
    already in the raster's CRS. `packed`: the results' arrays lie back to back in shared buffers, in
    row order (for a caller that joins them all, see `joined`)."""
    n = len(recs)
    out: list[Row] = [None] * n
    # joins repeat each AOI for every record: the read kernel moves each distinct AOI once per CRS pair
    # (parse_geoms shares one object per distinct WKB, so it recognises the repeats)
    todo: list[int] = []
    todo_codes: list[Sequence[str]] = []
    for i in range(n):
        g = geoms[i]
        rid = recs.ids[i]
        codes = bands[i]
        if g is None or codes is None or not recs.valid[i]:
            continue
        if isinstance(g, RasterduckError):
            out[i] = g.with_context(record_id=rid)
        elif not codes:
            out[i] = RasterduckError("no bands requested", record_id=rid)
        else:
            todo.append(i)
            todo_codes.append(codes)
    reqs: list[ReadRequest] = []
    where: list[int] = []
    for i, srcs in zip(todo, recs.sources_many(todo, todo_codes), strict=True):
        if isinstance(srcs, RasterduckError):
            out[i] = srcs
            continue
        reqs.append(ReadRequest(recs.ids[i], geoms[i], crs[i], srcs, all_touched))
        where.append(i)
    if reqs:
        budget = ctx.pixel_budget if pixel_budget is _UNSET else pixel_budget
        results = ctx.run(read_batch(reqs, ctx.backend, pixel_budget=budget, packed=packed))
        for i, req, r in zip(where, reqs, results, strict=True):
            out[i] = with_band(r, req) if isinstance(r, BaseException) else r
    return out


def with_band(exc: BaseException, req: ReadRequest) -> BaseException:
    """Make a read error name its band: the one whose URL failed, or the only one requested."""
    if not isinstance(exc, RasterduckError):
        src = req.bands[0] if req.bands else None
        return RasterduckError(f"{type(exc).__name__}: {exc}", record_id=req.record_id,
                               band=src.band if src and len(req.bands) == 1 else None,
                               url=src.url if src and len(req.bands) == 1 else None)
    if exc.band is None:
        match = [s for s in req.bands if s.url == exc.url] if exc.url else []
        if len(req.bands) == 1:
            match = list(req.bands)
        if match:
            exc.with_context(band=match[0].band if len(match) == 1 else ",".join(s.band for s in match),
                             url=match[0].url)
    return exc.with_context(record_id=req.record_id)


def raise_first(rows: Sequence[Row]) -> None:
    """Raise the first error among the rows of a call."""
    for r in rows:
        if isinstance(r, BaseException):
            raise r


def aoi_mask(ctx: KernelContext, r: ReadResult, geom: BaseGeometry, geom_crs: str | None,
             all_touched: bool = False) -> np.ndarray:
    """Pixels of a result's window inside the AOI (GDAL's rule), whatever their data."""
    g = geom
    if geom_crs is not None and r.crs is not None:
        g = ctx.geometry_in(geom, geom_crs, r.crs)
    if g.geom_type == "Point":
        return np.ones((r.height, r.width), dtype=bool)
    return geometry_mask(g, (r.height, r.width), r.transform, all_touched=all_touched)


def stat_values(r: ReadResult, inside: np.ndarray, band: int, exclude_nodata: bool) -> np.ndarray:
    """The values of one band a statistic counts: valid pixels (or all inside the AOI), NaNs dropped."""
    px = r.data[band]
    sel = r.valid if exclude_nodata else inside
    vals = px[sel].astype(np.float64)
    if exclude_nodata and px.dtype.kind == "f":
        vals = vals[~np.isnan(vals)]
    return vals


# ---- results ---------------------------------------------------------------------------------------
def dtype_mismatch(native: str, target: np.dtype) -> RasterduckError:
    """The error for a band whose dtype does not fit the result's pixel type."""
    return RasterduckError(f"band dtype {native} does not fit the pixel type {np.dtype(target).name} of this "
                           "function; register it with a pixel type that holds it")


def _classify(rows: Sequence[Row], safe: bool, check: Callable[[ReadResult], RasterduckError | None]
              ) -> tuple[list[ReadResult], np.ndarray, list[str | None]]:
    """(results that hold pixels, per-row kind 0 ok / 1 NULL / 2 error, per-row error text); without
    `safe` the first error raises. `check` may turn a result into an error (a pixel type it cannot hold)."""
    n = len(rows)
    kinds = np.zeros(n, dtype=np.int8)
    errors: list[str | None] = [None] * n
    ok: list[ReadResult] = []
    for i, r in enumerate(rows):
        if isinstance(r, ReadResult):
            exc = check(r)
            if exc is None:
                ok.append(r)
                continue
            if not safe:
                raise exc
            kinds[i], errors[i] = 2, str(exc)
        elif r is None:
            kinds[i] = 1
        else:
            if not safe:
                raise r
            kinds[i], errors[i] = 2, f"{type(r).__name__}: {r}"
    return ok, kinds, errors


def _result_struct(ok: Sequence[ReadResult], kinds: np.ndarray, errors: list[str | None], safe: bool,
                   nb: np.ndarray, data: pa.Array, valid: pa.Array) -> pa.StructArray:
    """The load_bands STRUCT around pixel columns `data` and `valid`: bands, size, transform, CRS,
    dtype, nodata (and `error` when safe); rows that are not ok are NULL (safe: NULL fields)."""
    good = kinds == 0
    bad = ~good
    transforms = np.array([r.transform for r in ok], dtype=np.float64).reshape(-1)
    children = [
        ab.lists(nb, ab.strings([b for r in ok for b in r.bands]), bad),
        ab.scattered([r.height for r in ok], good, pa.int32()),
        ab.scattered([r.width for r in ok], good, pa.int32()),
        ab.lists(np.where(good, 6, 0), ab.numeric(transforms, pa.float64()), bad),
        ab.scattered([r.crs for r in ok], good, pa.string()),
        ab.scattered([r.dtype for r in ok], good, pa.string()),
        ab.scattered([float(r.nodata) for r in ok], good, pa.float64()),
        data,
        valid,
    ]
    names = ["bands", "height", "width", "transform", "crs", "dtype", "nodata", "data", "valid"]
    if safe:
        children.append(ab.strings(errors))
        names.append("error")
    return pa.StructArray.from_arrays(children, names=names, mask=ab.booleans(kinds == 1 if safe else bad))


def _sizes(ok: Sequence[ReadResult], good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: number of bands and pixels per band (0 where the row holds no pixels)."""
    nb = np.zeros(len(good), dtype=np.int64)
    hw = np.zeros(len(good), dtype=np.int64)
    nb[good] = [len(r.bands) for r in ok]
    hw[good] = [r.height * r.width for r in ok]
    return nb, hw


def load_bands_array(rows: Sequence[Row], target: np.dtype, *, safe: bool,
                     mismatch: Callable[[str, np.dtype], RasterduckError] = dtype_mismatch) -> pa.StructArray:
    """The STRUCT column of load_bands (safe: plus `error`; otherwise the first error raises).

    The pixels of all rows are one NumPy array (the packed read's buffer when it already holds them in
    `target`, else a concatenation cast to `target`), wrapped by two levels of list offsets (row -> bands
    -> pixels)."""
    def check(r: ReadResult) -> RasterduckError | None:
        if r.data.dtype == target or np.can_cast(r.data.dtype, target, "safe"):
            return None
        return mismatch(r.dtype, target).with_context(record_id=r.record_id)

    ok, kinds, errors = _classify(rows, safe, check)
    good = kinds == 0
    nb, hw = _sizes(ok, good)
    values = joined([r.data.reshape(-1) for r in ok], target)
    valid = joined([r.valid.reshape(-1) for r in ok], np.dtype(bool))
    data = ab.lists(nb, ab.lists(np.repeat(hw[good], nb[good]), ab.numeric(values)), ~good)
    return _result_struct(ok, kinds, errors, safe, nb, data, ab.lists(hw, ab.booleans(valid), ~good))


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


_VIEW_MIN_BYTES = 16384  # average bytes per part below which copying is cheaper than checking addresses


def joined(parts: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """1-D `parts` end to end as one `dtype` array: a view of their buffer when they already lie back to
    back in it (a packed read of large windows), else a copy (cast safely to `dtype`)."""
    if not parts:
        return np.empty(0, dtype=dtype)
    base = parts[0].base
    if (isinstance(base, np.ndarray) and base.ndim == 1 and base.flags.c_contiguous
            and sum(p.nbytes for p in parts) >= _VIEW_MIN_BYTES * len(parts)
            and all(p.base is base and p.dtype == dtype and p.flags.c_contiguous for p in parts)):
        start = end = _address(parts[0])
        for p in parts:
            if _address(p) != end:
                break
            end += p.nbytes
        else:
            first = start - _address(base)
            return base.view(np.uint8)[first:first + end - start].view(dtype)
    return np.concatenate(parts, dtype=dtype, casting="safe")


def _little_endian_bytes(a: np.ndarray) -> np.ndarray:
    """The bytes of an array in little-endian byte order, row-major (a view when it already is)."""
    le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return le.reshape(-1).view(np.uint8)


def load_bands_raw_array(rows: Sequence[Row], *, safe: bool) -> pa.StructArray:
    """The STRUCT column of load_bands_raw: like load_bands, but `data` is one BLOB per band (the pixels'
    little-endian bytes, row-major, in the row's own `dtype`) and `valid` one BLOB of a byte per pixel
    (1 valid, 0 not). Every dtype fits, so rows keep their native type whatever the collection mixes."""
    ok, kinds, errors = _classify(rows, safe, lambda r: None)
    good = kinds == 0
    nb, hw = _sizes(ok, good)
    band_bytes = np.array([r.height * r.width * r.data.dtype.itemsize for r in ok for _ in r.bands], dtype=np.int64)
    data_buf = joined([_little_endian_bytes(r.data) for r in ok], np.dtype(np.uint8))
    valid_buf = joined([r.valid.reshape(-1) for r in ok], np.dtype(bool)).view(np.uint8)
    data = ab.lists(nb, ab.binaries(band_bytes, data_buf), ~good)
    return _result_struct(ok, kinds, errors, safe, nb, data, ab.binaries(hw, valid_buf, ~good))


def struct_of_dicts(rows: Sequence[dict[str, object] | None], typ: pa.StructType) -> pa.Array:
    """A StructArray from small per-row dicts (statistics: a handful of numbers per row)."""
    return ab.array_of(list(rows), typ)


def values_array(rows: Sequence[Row]) -> pa.Array:
    """DOUBLE[] per row: each band's value, NULL where the pixel is not valid; NULL row when missed."""
    flat: list[float | None] = []
    sizes = np.zeros(len(rows), dtype=np.int64)
    mask = np.ones(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        if not isinstance(r, ReadResult):
            continue
        ok = bool(r.valid[0, 0])
        flat.extend(float(v) if ok else None for v in r.data[:, 0, 0])
        sizes[i] = len(r.bands)
        mask[i] = False
    off = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(sizes, out=off[1:])
    return pa.ListArray.from_arrays(ab.numeric(off, pa.int32()), ab.array_of(flat, pa.float64()),
                                    mask=ab.booleans(mask))


ZONAL_STRUCT = pa.struct([("count", pa.int64()), ("valid_count", pa.int64()), ("min", pa.float64()),
                          ("max", pa.float64()), ("mean", pa.float64()), ("std", pa.float64()),
                          ("sum", pa.float64())])


def zonal_dicts(ctx: KernelContext, rows: Sequence[Row], geoms: Sequence[Geom], crs: Sequence[str | None],
                all_touched: bool = False) -> list[dict[str, object] | None]:
    """Per row: pixels inside the AOI (`count`) and statistics of the valid ones among them."""
    out: list[dict[str, object] | None] = []
    for i, r in enumerate(rows):
        g = geoms[i]
        if not isinstance(r, ReadResult) or not isinstance(g, BaseGeometry):
            out.append(None)
            continue
        inside = aoi_mask(ctx, r, g, crs[i], all_touched)
        vals = stat_values(r, inside, 0, True)
        stats: dict[str, object] = {"count": int(inside.sum()), "valid_count": int(vals.size)}
        if vals.size:
            stats.update(min=float(vals.min()), max=float(vals.max()), mean=float(vals.mean()),
                         std=float(vals.std()), sum=float(vals.sum()))
        out.append(stats)
    return out


def point_geoms(geoms: Sequence[Geom]) -> list[Geom]:
    """The AOIs of a point function: anything but a POINT becomes a GeometryError."""
    out: list[Geom] = []
    for g in geoms:
        if isinstance(g, BaseGeometry) and g.geom_type != "Point":
            out.append(GeometryError(f"expected a POINT, got a {g.geom_type}"))
        else:
            out.append(g)
    return out


def footprint_geoms(recs: ChunkRecords) -> list[BaseGeometry | None]:
    """Each record's footprint (CRS84): the geometry column, else its bbox, else from band metadata."""
    from .collection import record_footprint

    wkbs = recs.footprints()
    boxes = recs.bboxes()
    parsed: dict[object, BaseGeometry | None] = {}
    out: list[BaseGeometry | None] = []
    for i in range(len(recs)):
        if not recs.valid[i]:
            out.append(None)
            continue
        key: object = wkbs[i] if wkbs[i] is not None else boxes[i] if boxes[i] is not None else ("row", i)
        if key in parsed:
            out.append(parsed[key])
            continue
        g: BaseGeometry | None = None
        if wkbs[i] is not None:
            try:
                g = shapely.from_wkb(wkbs[i])
            except shapely.errors.GEOSException:
                g = None
        if g is None and boxes[i] is not None:
            g = shapely.box(*boxes[i])  # type: ignore[misc]
        if g is None:
            codes = recs.ordered_bands(i)
            if codes:
                m = recs.source(i, codes[0]).meta
                g = shapely.from_wkb(record_footprint(m.image_width, m.image_height, m.affine, recs.crs[i])[0])
        parsed[key] = g
        out.append(g)
    return out


# ---- the public batch functions ---------------------------------------------------------------------
def _context(context: KernelContext | None) -> KernelContext:
    return context if context is not None else process_kernel()


def _check_on_error(on_error: str) -> bool:
    if on_error not in ("raise", "null"):
        raise ValueError(f"on_error must be 'raise' or 'null', got {on_error!r}")
    return on_error == "null"


def _load_rows(records: pa.StructArray | pa.ChunkedArray, geoms: pa.Array | pa.ChunkedArray, bands: BandsArg,
               geometry_crs: CrsArg, all_touched: bool, pixel_budget: int | None, context: KernelContext | None
               ) -> list[Row]:
    ctx = _context(context)
    recs = ChunkRecords(records, ctx.cache, ctx.data_sources())
    n = len(recs)
    crs = geometry_crs_values(geometry_crs, n, geoms)
    return read_pairs(ctx, recs, parse_geoms(geoms), band_lists(bands, n), crs, all_touched=all_touched,
                      pixel_budget=pixel_budget, packed=True)


@without_gc
def load_bands_arrow(records: pa.StructArray | pa.ChunkedArray, geoms: pa.Array | pa.ChunkedArray, bands: BandsArg,
                     *, geometry_crs: CrsArg = None, all_touched: bool = False, on_error: OnError = "raise",
                     pixel_budget: int | None = _UNSET, pixel_type: str | np.dtype = DEFAULT_PIXEL_DTYPE,
                     context: KernelContext | None = None,
                     mismatch: Callable[[str, np.dtype], RasterduckError] = dtype_mismatch) -> pa.StructArray:
    """The `load_bands` result column for a batch of (record, AOI, bands) rows, planned as one read.

    STRUCT(bands, height, width, transform, crs, dtype, nodata, data list<list<pixel_type>>, valid);
    NULL where the AOI misses the raster or an argument is NULL. `on_error='null'` adds an `error` field
    and turns a failing row into NULL fields with its message instead of raising. `geometry_crs`: one CRS
    or one per row (default: a GEOMETRY struct's SRID, else EPSG:4326). `pixel_budget` (bytes of pixels
    this call may hold) defaults to the context's."""
    safe = _check_on_error(on_error)
    rows = _load_rows(records, geoms, bands, geometry_crs, all_touched, pixel_budget, context)
    return load_bands_array(rows, np.dtype(pixel_dtype(pixel_type)), safe=safe, mismatch=mismatch)


@without_gc
def load_bands_raw_arrow(records: pa.StructArray | pa.ChunkedArray, geoms: pa.Array | pa.ChunkedArray,
                         bands: BandsArg, *, geometry_crs: CrsArg = None, all_touched: bool = False,
                         on_error: OnError = "raise", pixel_budget: int | None = _UNSET,
                         context: KernelContext | None = None) -> pa.StructArray:
    """`load_bands_arrow` with the pixels as bytes (see load_bands_raw_array): a BLOB leaves an engine
    several times faster than a list of numbers, and each row keeps its native dtype."""
    safe = _check_on_error(on_error)
    rows = _load_rows(records, geoms, bands, geometry_crs, all_touched, pixel_budget, context)
    return load_bands_raw_array(rows, safe=safe)


@without_gc
def zonal_stats_arrow(records: pa.StructArray | pa.ChunkedArray, geoms: pa.Array | pa.ChunkedArray, band: BandsArg,
                      *, geometry_crs: CrsArg = None, all_touched: bool = False, on_error: OnError = "raise",
                      pixel_budget: int | None = _UNSET, context: KernelContext | None = None) -> pa.StructArray:
    """STRUCT(count, valid_count, min, max, mean, std, sum) of the first band's pixels inside each AOI.

    `count` counts pixels inside the AOI, the statistics only valid ones (not nodata or masked).
    `on_error='null'` gives NULL for a failing row instead of raising."""
    safe = _check_on_error(on_error)
    ctx = _context(context)
    recs = ChunkRecords(records, ctx.cache, ctx.data_sources())
    n = len(recs)
    parsed = parse_geoms(geoms)
    crs = geometry_crs_values(geometry_crs, n, geoms)
    rows = read_pairs(ctx, recs, parsed, band_lists(band, n), crs, all_touched=all_touched,
                      pixel_budget=pixel_budget)
    if not safe:
        raise_first(rows)
    return struct_of_dicts(zonal_dicts(ctx, rows, parsed, crs, all_touched), ZONAL_STRUCT)  # type: ignore[return-value]


@without_gc
def pixel_values_arrow(records: pa.StructArray | pa.ChunkedArray, points: pa.Array | pa.ChunkedArray,
                       bands: BandsArg, *, geometry_crs: CrsArg = None, on_error: OnError = "raise",
                       context: KernelContext | None = None) -> pa.ListArray:
    """list<double> per row: the pixel under the point for each band, NULL where it is not valid (nodata,
    masked); NULL when the point misses the raster (or fails, with `on_error='null'`)."""
    safe = _check_on_error(on_error)
    ctx = _context(context)
    recs = ChunkRecords(records, ctx.cache, ctx.data_sources())
    n = len(recs)
    rows = read_pairs(ctx, recs, point_geoms(parse_geoms(points)), band_lists(bands, n),
                      geometry_crs_values(geometry_crs, n, points))
    if not safe:
        raise_first(rows)
    return values_array(rows)  # type: ignore[return-value]


def intersects_arrow(records: pa.StructArray | pa.ChunkedArray, geoms: pa.Array | pa.ChunkedArray, *,
                     geometry_crs: CrsArg = None, context: KernelContext | None = None) -> pa.BooleanArray:
    """Whether each AOI meets its record's footprint (CRS84): the join condition of a collection x AOIs.

    `records` may also be the footprints themselves (the `geometry` column, WKB in CRS84): engines that
    cannot put a whole row in a join condition (Spark) pass that."""
    ctx = _context(context)
    arr = combine(records)
    feet: list[BaseGeometry | None]
    if pa.types.is_struct(arr.type):
        recs = ChunkRecords(arr, ctx.cache, ctx.data_sources())
        ids = recs.ids
        feet = footprint_geoms(recs)
    else:
        ids = [f"row{i}" for i in range(len(arr))]
        feet = []
        for i, f in enumerate(parse_geoms(arr)):
            if isinstance(f, RasterduckError):
                raise f.with_context(record_id=ids[i])
            feet.append(f)
    n = len(feet)
    parsed = parse_geoms(geoms)
    crs = geometry_crs_values(geometry_crs, n, geoms)
    a = np.empty(n, dtype=object)
    b = np.empty(n, dtype=object)
    for i, g in enumerate(parsed):
        if isinstance(g, RasterduckError):
            raise g.with_context(record_id=ids[i])
        if g is not None and crs[i] != AOI_CRS:
            g = ctx.geometry_in(g, crs[i], AOI_CRS)
        a[i], b[i] = feet[i], g
    res = shapely.intersects(a, b)
    valid = np.array([f is not None and g is not None for f, g in zip(a, b, strict=True)], dtype=bool)
    return ab.booleans(np.asarray(res, dtype=bool), ~valid)


__all__ = [
    "AOI_CRS",
    "DEFAULT_PIXEL_DTYPE",
    "PIXEL_DTYPES",
    "ZONAL_STRUCT",
    "ChunkRecords",
    "Kernel",
    "KernelContext",
    "MetadataCache",
    "band_dtypes",
    "intersects_arrow",
    "load_bands_arrow",
    "pixel_dtype",
    "pixel_values_arrow",
    "process_kernel",
    "promote",
    "read_pairs",
    "zonal_stats_arrow",
]
