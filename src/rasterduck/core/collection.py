"""Collection: a table of raster records (one row per scene) with cached COG headers per band."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely

from ..errors import CollectionError
from .arrowbuild import array_of, float_values, validity
from .schema import BBOX_TYPE, GEOMETRY_FIELD, METADATA_SUFFIX, band_columns, record_crs, validate

if TYPE_CHECKING:
    from .accessor import RasterAccessor

# rows per Parquet row group. DuckDB calls a UDF per row group from several threads, so a larger
# collection's scan spreads over the cores; each call still gets enough rows to keep its fetches
# concurrent (a call ends with its slowest read: in 64-row groups the benchmark's 200-scene series went
# in 4 calls and lost ~0.07 s of 0.9 to their tails).
DEFAULT_ROW_GROUP = 256
_WKB_TYPES = {1: "Point", 2: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString", 6: "MultiPolygon", 7: "GeometryCollection"}


class Collection:
    """An Arrow table of records following the rasteret schema contract, plus collection metadata."""

    def __init__(self, table: pa.Table, *, name: str = "", data_source: str = "", description: str = "") -> None:
        validate(table.schema)
        self._table = normalize(table)
        self.name = name
        self.data_source = data_source
        self.description = description

    # ---- basic facts ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._table.num_rows

    def __repr__(self) -> str:
        return f"Collection(name={self.name!r}, records={len(self)}, bands={self.bands})"

    @property
    def bands(self) -> list[str]:
        """Band codes with a `{band}_metadata` column."""
        return band_columns(self._table.schema)

    def to_arrow(self) -> pa.Table:
        """The records as an Arrow table (with GeoParquet-ready schema metadata)."""
        return self._table.replace_schema_metadata(self._schema_metadata())

    def errors(self) -> list[dict[str, Any]]:
        """Assets that failed to build: record id, band, href and the message."""
        if "build_errors" not in self._table.column_names:
            return []
        out = []
        for rid, errs in zip(self._table["id"].to_pylist(), self._table["build_errors"].to_pylist(), strict=True):
            for e in errs or []:
                out.append({"id": rid, **e})
        return out

    def rewrite_hrefs(self, patterns: dict[str, str]) -> Collection:
        """A copy whose asset hrefs starting with a key get that prefix replaced (first match wins);
        e.g. move a collection from relative paths to a server: {"geotiff/": "http://host/geotiff/"}."""
        assets = self._table["assets"]
        rows: list[dict[str, Any] | None] = []
        for a in assets.to_pylist():
            if a is None:
                rows.append(None)
                continue
            new = {}
            for band, v in a.items():
                if v is not None and isinstance(v.get("href"), str):
                    href = v["href"]
                    for old, repl in patterns.items():
                        if href.startswith(old):
                            href = repl + href[len(old):]
                            break
                    v = {**v, "href": href}
                new[band] = v
            rows.append(new)
        idx = self._table.schema.get_field_index("assets")
        table = self._table.set_column(idx, "assets", pa.array(rows, type=assets.type))
        return Collection(table, name=self.name, data_source=self.data_source, description=self.description)

    # ---- iteration -----------------------------------------------------------------------------
    def iterate_rasters(self, bands: Sequence[str] | None = None) -> Iterator[RasterAccessor]:
        """One RasterAccessor per record (only the requested bands' metadata is converted)."""
        return self.rasters_at(None, bands)

    def rasters_at(self, rows: Sequence[int] | np.ndarray | None, bands: Sequence[str] | None = None
                   ) -> Iterator[RasterAccessor]:
        """RasterAccessors of the records at positions `rows` (all records when None), in table order."""
        from .accessor import RasterAccessor, RasterInfo

        wanted = [b for b in (bands or self.bands) if b + METADATA_SUFFIX in self._table.column_names]
        cols = [c for c in ("id", "datetime", "geometry", "assets", "bbox", "proj:epsg", "crs", "eo:cloud_cover", "collection")
                if c in self._table.column_names]
        cols += [b + METADATA_SUFFIX for b in wanted]
        table = self._table.select(cols)
        idx = None if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
        if idx is not None and len(idx) <= 32 and 4 * len(idx) < len(table):
            # a few records of many: zero-copy slices (~0.2 ms each; the table's `take` rebuilt whole
            # nested columns: 179 ms for 1 row of 20,000)
            for i in idx.tolist():
                for row in table.slice(i, 1).to_pylist():
                    yield RasterAccessor(RasterInfo.from_row(row), self.data_source)
            return
        start = 0
        for batch in table.to_batches(max_chunksize=1024):
            if idx is not None:
                local = idx[(idx >= start) & (idx < start + batch.num_rows)] - start
                start += batch.num_rows
                if not len(local):
                    continue
                if len(local) < batch.num_rows or not np.array_equal(local, np.arange(batch.num_rows)):
                    batch = batch.take(pa.array(local))
            for row in batch.to_pylist():
                yield RasterAccessor(RasterInfo.from_row(row), self.data_source)

    def bboxes(self) -> np.ndarray:
        """(records, 4) lon/lat bboxes (xmin, ymin, xmax, ymax), NaN where a record has none."""
        n = len(self._table)
        if "bbox" not in self._table.column_names:
            return np.full((n, 4), np.nan)
        if not n:
            return np.empty((0, 4))
        col = self._table["bbox"].combine_chunks()
        out = np.column_stack([float_values(col.field(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        out[~validity(col)] = np.nan  # a null bbox: its fields' values are not defined
        return out

    def overlapping(self, boxes: Sequence[tuple[float, float, float, float] | None]) -> np.ndarray:
        """Sorted positions of the records whose bbox meets at least one of `boxes` (edges touching count;
        a None box meets every record that has a bbox). A bbox index, so a read of a few fields from a
        large collection converts only the records near them."""
        rb = self.bboxes()
        has = ~np.isnan(rb).any(axis=1)
        if any(b is None for b in boxes):
            return np.flatnonzero(has)
        if not boxes or not has.any():
            return np.empty(0, dtype=np.int64)
        tree = shapely.STRtree(shapely.box(rb[has, 0], rb[has, 1], rb[has, 2], rb[has, 3]))
        hit = np.zeros(int(has.sum()), dtype=bool)  # not np.unique: its first call imports numpy.ma (~8 ms)
        hit[tree.query(shapely.box(*np.asarray(boxes, dtype=np.float64).T))[1]] = True
        return np.flatnonzero(has)[hit]

    def record_ids(self) -> list[str]:
        """Each record's id as text."""
        return [str(v) for v in self._table["id"].to_pylist()]

    def record_crs(self) -> list[str | None]:
        """Each record's raster CRS as RasterInfo gives it ('EPSG:n' from proj:epsg, else the crs column)."""
        n = len(self._table)
        names = self._table.column_names
        crs = self._table["crs"].to_pylist() if "crs" in names else [None] * n
        epsg = self._table["proj:epsg"].to_pylist() if "proj:epsg" in names else [None] * n
        return [record_crs(e, c) for e, c in zip(epsg, crs, strict=True)]

    def read(self, geometries: Any, bands: Sequence[str], **kw: Any) -> list[Any]:
        """Read `bands` under every AOI from every record whose footprint it overlaps, as one planned batch
        (blocking; see core/outputs.py `read_collection` for the keywords, e.g. geometry_crs, target_crs).
        Returns ReadResult objects tagged with `record_id` and `geometry_index`."""
        from ..io.loop import run_sync
        from .outputs import read_collection

        return run_sync(read_collection(self, geometries, bands, **kw))

    # ---- persistence ---------------------------------------------------------------------------
    def to_parquet(self, path: str | Path, *, row_group_size: int = DEFAULT_ROW_GROUP) -> Path:
        """Write one Parquet file (Snappy, GeoParquet 1.1 `geo` metadata, small row groups).

        Snappy, not zstd: a collection has ~40 leaf columns per band and pyarrow pays a zstd context per
        column chunk, so opening an 8-scene collection took 5-15 ms with zstd and 3-5 ms with Snappy (2x
        also at 4,000 rows) for files ~10 % larger."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_arrow(), path, compression="snappy", row_group_size=row_group_size)
        return path

    def _schema_metadata(self) -> dict[bytes, bytes]:
        t = self._table
        meta = dict(t.schema.metadata or {})
        dates = t["datetime"].drop_null() if "datetime" in t.column_names else None
        date_range = ""
        if dates is not None and len(dates):
            lo, hi = pc.min(dates).as_py(), pc.max(dates).as_py()
            date_range = f"{lo.isoformat()},{hi.isoformat()}"
        base = {
            b"name": self.name.encode(),
            b"data_source": self.data_source.encode(),
            b"description": self.description.encode(),
            b"created": dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat().encode(),
            b"date_range": date_range.encode(),
            b"rasteret_collection_version": b"1",
            b"rasterduck_version": b"1",
        }
        for k, v in base.items():
            meta.setdefault(k, v)
        if b"geo" not in meta:
            meta[b"geo"] = json.dumps(_geo_metadata(t)).encode()
        return meta


def _geo_metadata(t: pa.Table) -> dict[str, Any]:
    types = set()
    for wkb in t["geometry"].drop_null().to_pylist():
        if wkb and len(wkb) >= 5:
            code = int.from_bytes(wkb[1:5], "little" if wkb[0] == 1 else "big") % 1000
            if code in _WKB_TYPES:
                types.add(_WKB_TYPES[code])
    col: dict[str, Any] = {"encoding": "WKB", "geometry_types": sorted(types)}
    if "bbox" in t.column_names:
        col["covering"] = {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}


def normalize(t: pa.Table) -> pa.Table:
    """Fill what the contract derives (bbox from geometry, crs/proj:epsg sidecars, year/month)."""
    # geometry with GeoArrow WKB + CRS84 metadata
    geom = t["geometry"]
    if pa.types.is_large_binary(geom.type):
        geom = geom.cast(pa.binary())
    idx = t.schema.get_field_index("geometry")
    t = t.set_column(idx, GEOMETRY_FIELD, geom)
    if "id" in t.column_names and not pa.types.is_string(t.schema.field("id").type):
        t = t.set_column(t.schema.get_field_index("id"), "id", t["id"].cast(pa.string()))
    if "bbox" not in t.column_names or not pa.types.is_struct(t.schema.field("bbox").type):
        arr = bbox_column(t["geometry"].to_pylist())
        if "bbox" in t.column_names:
            t = t.set_column(t.schema.get_field_index("bbox"), "bbox", arr)
        else:
            t = t.append_column("bbox", arr)
    if "proj:epsg" not in t.column_names:
        codes = []
        for c in t["crs"].to_pylist() if "crs" in t.column_names else [None] * t.num_rows:
            codes.append(int(c.split(":")[1]) if isinstance(c, str) and c.upper().startswith("EPSG:") else None)
        t = t.append_column("proj:epsg", pa.array(codes, pa.int32()))
    if "crs" not in t.column_names:
        t = t.append_column("crs", pa.array([f"EPSG:{c}" if c is not None else None for c in t["proj:epsg"].to_pylist()], pa.string()))
    if "datetime" in t.column_names and pa.types.is_timestamp(t.schema.field("datetime").type):
        if "year" not in t.column_names:
            t = t.append_column("year", pc.year(t["datetime"]).cast(pa.int32()))
        if "month" not in t.column_names:
            t = t.append_column("month", pc.month(t["datetime"]).cast(pa.int32()))
    return t


def bbox_column(footprints: Sequence[bytes | None]) -> pa.Array:
    """The `bbox` covering column of WKB footprints (null where a footprint is missing, empty or unreadable),
    built without `pa.array` (see arrowbuild)."""
    boxes: list[dict[str, float] | None] = []
    for wkb in footprints:
        try:
            g = shapely.from_wkb(wkb) if wkb else None
        except shapely.errors.GEOSException:
            g = None
        if g is None or g.is_empty:
            boxes.append(None)
        else:
            x0, y0, x1, y1 = (float(v) for v in g.bounds)
            boxes.append({"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1})
    return array_of(boxes, BBOX_TYPE)


def open_collection(path: str | Path, *, name: str | None = None) -> Collection:
    """Open a collection written by rasterduck or rasteret: one Parquet file or a (Hive) folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no collection at {p}")
    if p.is_dir():
        import pyarrow.dataset as ds  # imports pandas: only when a Hive folder is opened

        dataset = ds.dataset(p, format="parquet", partitioning="hive", exclude_invalid_files=True)
        table = dataset.to_table()
        schema_meta = (dataset.schema.metadata or {})
    else:
        table = pq.ParquetFile(p).read()  # not pq.read_table: that builds a dataset, importing pandas (~0.3 s)
        schema_meta = table.schema.metadata or {}
    for col in ("year", "month"):  # hive keys come back as dictionaries or int64
        if col in table.column_names and not pa.types.is_integer(table.schema.field(col).type):
            table = table.set_column(table.schema.get_field_index(col), col, pc.cast(pc.cast(table[col], pa.string()), pa.int32()))
    meta = {k.decode(): v.decode() for k, v in schema_meta.items() if k != b"geo"}
    validate(table.schema)  # before anything reads the columns
    table = _resolve_relative_hrefs(table, p if p.is_dir() else p.parent)
    return Collection(
        table,
        name=name if name is not None else (meta.get("name") or p.stem),
        data_source=meta.get("data_source", "") if meta.get("data_source") not in (None, "unknown") else "",
        description=meta.get("description", ""),
    )


def _resolve_relative_hrefs(table: pa.Table, folder: Path) -> pa.Table:
    """Relative local hrefs that name files beside the collection become absolute paths, so a collection
    shipped together with its GeoTIFFs opens from anywhere. Other hrefs are left as they are."""
    from ..io.policy import url_scheme

    if "assets" not in table.column_names:
        return table
    assets = table["assets"].to_pylist()
    first = next((v["href"] for a in assets if a for v in a.values() if v and v.get("href")), None)
    if first is None or url_scheme(first) != "" or Path(first).is_absolute() or not (folder / first).is_file():
        return table
    base = folder.resolve()
    rows = [
        {b: ({**v, "href": str(base / v["href"])} if v and v.get("href") and url_scheme(v["href"]) == ""
             and not Path(v["href"]).is_absolute() else v) for b, v in a.items()} if a else a
        for a in assets
    ]
    idx = table.schema.get_field_index("assets")
    return table.set_column(idx, table.schema.field("assets"), pa.array(rows, type=table.schema.field("assets").type))


def record_footprint(width: int, height: int, affine: tuple[float, ...], crs: str | None) -> tuple[bytes, dict[str, float]]:
    """The raster's outline in CRS84 as WKB (edges densified before reprojection) and its bbox."""
    import numpy as np

    a, b, c, d, e, f = affine
    n = 21
    cols = np.concatenate([np.linspace(0, width, n), np.full(n, width), np.linspace(width, 0, n), np.zeros(n)])
    rows = np.concatenate([np.zeros(n), np.linspace(0, height, n), np.full(n, height), np.linspace(height, 0, n)])
    xs = a * cols + b * rows + c
    ys = d * cols + e * rows + f
    if crs is not None:
        from .geometry import get_transformer

        tr = get_transformer(crs, "OGC:CRS84")  # cached per CRS: a build has few distinct ones
        if tr is not None:
            xs, ys = tr.transform(xs, ys)
    ring = np.column_stack([xs, ys])
    if not np.isfinite(ring).all():
        raise CollectionError("raster footprint does not reproject to CRS84")
    poly = shapely.Polygon(ring)
    if not poly.is_valid:
        poly = shapely.make_valid(poly)
    x0, y0, x1, y1 = poly.bounds
    return shapely.to_wkb(poly), {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
