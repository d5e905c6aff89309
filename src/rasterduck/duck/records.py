"""Collection rows (the `r` of `FROM collection r`) as they reach a UDF: an Arrow StructArray per chunk.

`ChunkRecords` turns one chunk's rows into `BandSource`s without converting whole rows to Python:
band codes are resolved once per struct type, only the requested `{band}_metadata` values are read,
and each (record id, band, href, CRS) is parsed once per registration (an LRU shared by all calls,
since a join repeats the same records in every chunk).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..core.bands import candidates
from ..core.metadata import CogMetadata
from ..core.read import BandSource
from ..errors import BandNotFoundError, CollectionError

METADATA_SUFFIX = "_metadata"


def combine(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous Arrow array from a UDF argument (DuckDB passes ChunkedArrays)."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return values.chunk(0)
        return values.combine_chunks()
    return values


class MetadataCache:
    """A thread-safe LRU of parsed band metadata keyed by (record id, band, href, crs)."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, str, str | None], CogMetadata] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str, str | None]) -> CogMetadata | None:
        """The cached metadata or None (marks the entry as recently used)."""
        with self._lock:
            meta = self._items.get(key)
            if meta is not None:
                self._items.move_to_end(key)
            return meta

    def put(self, key: tuple[str, str, str, str | None], meta: CogMetadata) -> None:
        """Store one entry, evicting the least recently used beyond `size`."""
        with self._lock:
            self._items[key] = meta
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass
class _BandColumns:
    """Where one band code lives in this chunk's struct: its asset and metadata columns."""

    code: str
    asset_key: str
    meta: pa.StructArray
    hrefs: list[str | None]
    indexes: list[int | None]


def _names(t: pa.DataType) -> list[str]:
    return [t.field(i).name for i in range(t.num_fields)]


class ChunkRecords:
    """The records of one UDF call: ids, CRSs and, on demand, band sources per row."""

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
        self.crs: list[str | None] = [f"EPSG:{int(e)}" if e is not None else (str(c) if c else None)
                                      for e, c in zip(epsg, crs, strict=True)]
        sources = list(dict.fromkeys(data_sources))
        if "collection" in self.names:
            sources = [str(v) for v in dict.fromkeys(arr.field("collection").to_pylist()) if v] + sources
        self.data_sources = [*sources, ""]
        self._bands: dict[str, _BandColumns | None] = {}

    def __len__(self) -> int:
        return len(self.arr)

    # ---- band resolution -----------------------------------------------------------------------
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
                    valid = pc.and_(asset.is_valid(), assets.is_valid()).to_pylist()
                    hrefs = [h if ok else None for h, ok in zip(hrefs, valid, strict=True)]
                    found = _BandColumns(code, key, self.arr.field(meta_col), hrefs, idx)
                    break
                if found is not None:
                    break
        self._bands[code] = found
        return found

    def source(self, row: int, code: str) -> BandSource:
        """The BandSource of band `code` of row `row`; BandNotFoundError when the record lacks it."""
        cols = self._columns(code)
        rid = self.ids[row]
        href = cols.hrefs[row] if cols is not None else None
        if cols is None or href is None or not cols.meta[row].is_valid:
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

    def sources(self, row: int, codes: Sequence[str]) -> list[BandSource]:
        """BandSources of several bands of one row (first missing band raises)."""
        return [self.source(row, c) for c in codes]

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
        """A band given as a code (VARCHAR) or Sedona's 1-based number, as a code."""
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
