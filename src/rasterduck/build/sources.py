"""Record specs from the three kinds of input: GeoTIFF hrefs, STAC items, and records tables."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import shapely.geometry

from ..errors import CollectionError
from .records import RecordSpec

BandMap = Mapping[str, int]  # band code -> band_index (0-based sample of the file)


def _stem(href: str) -> str:
    name = href.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    return re.sub(r"\.(tiff?|TIFF?)$", "", name) or href


def parse_datetime(value: Any) -> dt.datetime | None:
    """A naive UTC datetime from a datetime, an ISO string ('...Z' is UTC) or a year (int)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, int):
        return dt.datetime(value, 1, 1)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    return parsed.astimezone(dt.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def specs_from_hrefs(
    hrefs: Sequence[str],
    *,
    band_map: BandMap | Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    datetimes: Sequence[Any] | Any = None,
    samples: Mapping[str, int] | None = None,
) -> list[RecordSpec]:
    """One record per file. Bands: `band_map` (code -> sample index, or names of samples in order),
    else b1..bN over the file's samples (`samples` gives N per href, from its header)."""
    if ids is not None and len(ids) != len(hrefs):
        raise CollectionError(f"{len(ids)} ids for {len(hrefs)} hrefs")
    out = []
    for i, href in enumerate(hrefs):
        if band_map is None:
            n = (samples or {}).get(href, 1)
            assets = {f"b{k + 1}": (href, k) for k in range(n)}
        elif isinstance(band_map, Mapping):
            assets = {code: (href, int(idx)) for code, idx in band_map.items()}
        else:
            assets = {code: (href, k) for k, code in enumerate(band_map)}
        when = datetimes[i] if isinstance(datetimes, list | tuple) else datetimes
        out.append(RecordSpec(id=ids[i] if ids is not None else _stem(href), datetime=parse_datetime(when), assets=assets))
    return out


# ---- STAC ------------------------------------------------------------------------------------------
_TIFF_TYPES = ("image/tiff", "image/vnd.stac.geotiff")


STAC_MAX_BYTES = 256 * 1024 * 1024  # a STAC document larger than this is refused


def load_stac_json(source: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]],
                   fetch_text: Any = None) -> list[dict[str, Any]]:
    """Items from an Item, an ItemCollection/FeatureCollection, a list of items, a JSON file, or an
    http(s) URL (read with `fetch_text(url) -> str`, the I/O layer's bounded reader)."""
    if isinstance(source, str) and re.match(r"^https?://", source):
        if fetch_text is None:
            raise CollectionError("reading STAC from a URL needs a fetcher")
        data: Any = json.loads(fetch_text(source))
    elif isinstance(source, str | Path):
        data = json.loads(Path(source).read_text())
    else:
        data = source
    if isinstance(data, Mapping):
        if data.get("type") == "FeatureCollection" or "features" in data:
            return [dict(f) for f in data.get("features", [])]
        return [dict(data)]
    return [dict(d) for d in data]


def _is_geotiff(asset: Mapping[str, Any]) -> bool:
    t = str(asset.get("type") or "")
    href = str(asset.get("href") or "")
    return t.startswith(_TIFF_TYPES) or href.lower().split("?")[0].endswith((".tif", ".tiff"))


def _resolve(href: str, base: str | None) -> str:
    if base is None or re.match(r"^[a-z][a-z0-9+.-]*://", href) or href.startswith("/"):
        return href
    return base.rsplit("/", 1)[0] + "/" + href


def specs_from_stac(
    items: Iterable[Mapping[str, Any]],
    *,
    bands: Sequence[str] | None = None,
    band_map: Mapping[str, str] | None = None,
    band_index_map: Mapping[str, int] | None = None,
    base_url: str | None = None,
) -> list[RecordSpec]:
    """One record per STAC item; band codes are asset keys (GeoTIFF assets), renamed by `band_map`
    (code -> asset key); several codes may share an asset with distinct `band_index_map` entries."""
    out = []
    shapes: list[Any] = []
    for item in items:
        assets_in = item.get("assets") or {}
        if band_map:
            chosen = dict(band_map)
        else:
            keys = [k for k, a in assets_in.items() if _is_geotiff(a)]
            chosen = {k: k for k in (bands if bands is not None else keys)}
        assets: dict[str, tuple[str, int]] = {}
        for code, key in chosen.items():
            a = assets_in.get(key)
            if not a or not a.get("href"):
                continue
            assets[code] = (_resolve(str(a["href"]), base_url), int((band_index_map or {}).get(code, 0)))
        props = dict(item.get("properties") or {})
        when = props.pop("datetime", None) or props.get("start_datetime")
        crs = None
        if props.get("proj:code"):
            crs = str(props["proj:code"])
        elif props.get("proj:epsg") is not None:
            crs = f"EPSG:{int(props['proj:epsg'])}"
        shapes.append(_geometry(item["geometry"]) if item.get("geometry") else None)
        keep = {k: v for k, v in props.items() if isinstance(v, str | int | float | bool) and k not in ("proj:epsg", "proj:code")}
        if item.get("collection"):
            keep["collection"] = item["collection"]
        out.append(RecordSpec(id=str(item.get("id")), datetime=parse_datetime(when), assets=assets,
                              properties=keep, crs=crs))
    if any(g is not None for g in shapes):  # one vectorized WKB encoding for all footprints (None stays None)
        for spec, wkb in zip(out, shapely.to_wkb(np.asarray(shapes, dtype=object)).tolist(), strict=True):
            spec.geometry = wkb
    return out


def _geometry(geojson: Mapping[str, Any]) -> Any:
    """A shapely geometry from a GeoJSON geometry; polygons (STAC footprints) straight from coordinate
    arrays, 2-3x faster than shapely.geometry.shape, which everything else goes through."""
    if geojson.get("type") == "Polygon":
        try:
            rings = [np.asarray(r, dtype=np.float64) for r in geojson["coordinates"]]
            if rings and all(r.ndim == 2 and r.shape[1] in (2, 3) and r.shape[1] == rings[0].shape[1] for r in rings):
                return shapely.polygons(rings[0], holes=rings[1:] or None)
        except (TypeError, ValueError, KeyError, shapely.errors.GEOSException):
            pass
    return shapely.geometry.shape(geojson)


# ---- records tables ------------------------------------------------------------------------------
def specs_from_table(
    table: pa.Table | str | Path,
    *,
    href_column: str | None = None,
    band_index_map: Mapping[str, int] | None = None,
    id_column: str = "id",
    datetime_column: str = "datetime",
    url_rewrite: Mapping[str, str] | None = None,
) -> list[RecordSpec]:
    """One record per row: `assets` struct column (band -> {href, band_index}), or `href_column` plus
    `band_index_map` (every band in the same file). Other columns are kept as they are."""
    if not isinstance(table, pa.Table):
        path = Path(table)  # one file: ParquetFile, as pq.read_table builds a dataset, which imports pandas
        table = pq.ParquetFile(path).read() if path.is_file() else pq.read_table(table)
    if id_column not in table.column_names:
        raise CollectionError(f"records table has no '{id_column}' column")
    skip = {id_column, datetime_column, "assets", "geometry", "bbox", "proj:epsg", "crs", "year", "month", "build_errors"}
    out = []
    for row in table.to_pylist():
        assets: dict[str, tuple[str, int]] = {}
        if href_column is not None:
            href = row.get(href_column)
            if href:
                for code, idx in (band_index_map or {"b1": 0}).items():
                    assets[code] = (_rewrite(str(href), url_rewrite), int(idx))
        elif row.get("assets"):
            for code, a in row["assets"].items():
                if a and a.get("href"):
                    assets[code] = (_rewrite(str(a["href"]), url_rewrite), int(a.get("band_index") or 0))
        else:
            raise CollectionError("records table needs an 'assets' column or href_column=")
        crs = row.get("crs") or (f"EPSG:{row['proj:epsg']}" if row.get("proj:epsg") is not None else None)
        props = {k: v for k, v in row.items() if k not in skip and not k.endswith("_metadata") and k != href_column}
        out.append(RecordSpec(id=str(row[id_column]), datetime=parse_datetime(row.get(datetime_column)),
                              assets=assets, properties=props, crs=crs, geometry=row.get("geometry")))
    return out


def _rewrite(href: str, patterns: Mapping[str, str] | None) -> str:
    for old, new in (patterns or {}).items():
        if href.startswith(old):
            return new + href[len(old):]
    return href
