"""Turn record specs plus parsed headers into a collection table (the rasteret schema contract)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..core.arrowbuild import array_of, infer_array
from ..core.collection import bbox_column, record_footprint
from ..core.metadata import METADATA_TYPE, CogMetadata, metadata_from_header
from ..core.schema import ASSET_TYPE, BBOX_TYPE, ERRORS_TYPE, GEOMETRY_FIELD
from ..errors import RasterduckError
from ..tiff.model import TiffHeader


@dataclass
class RecordSpec:
    """One record to build: id, time, band code -> (href, band_index), extra columns."""

    id: str
    datetime: dt.datetime | None
    assets: dict[str, tuple[str, int]]
    properties: dict[str, Any] = field(default_factory=dict)
    crs: str | None = None  # a CRS the source states (STAC proj:epsg/proj:code); the header fills gaps
    geometry: bytes | None = None  # footprint the source states (STAC); else derived from the header


def _epsg_of(crs: str | None) -> int | None:
    if crs and crs.upper().startswith("EPSG:") and crs[5:].isdigit():
        return int(crs[5:])
    return None


def _timestamps(values: list[dt.datetime | None]) -> pa.Array:
    """timestamp[us] from naive datetimes, laid out as integers (pa.array imports pandas)."""
    epoch = dt.datetime(1970, 1, 1)
    micros = [None if v is None else (v - epoch) // dt.timedelta(microseconds=1) for v in values]
    return array_of(micros, pa.timestamp("us"))


def assemble(specs: list[RecordSpec], headers: dict[str, TiffHeader | BaseException]) -> pa.Table:
    """The records table; a band whose header failed is null with its error in `build_errors`.
    Columns are laid out without `pa.array` (see .arrow): its first call imports pandas (~0.2 s)."""
    bands: list[str] = []
    for s in specs:
        for b in s.assets:
            if b not in bands:
                bands.append(b)
    rows: dict[str, list[Any]] = {k: [] for k in ("id", "datetime", "geometry", "assets", "proj:epsg", "crs", "build_errors")}
    metas: dict[str, list[CogMetadata | None]] = {b: [] for b in bands}
    extra_keys: list[str] = []
    for s in specs:
        for k in s.properties:
            if k not in extra_keys and k not in rows and not k.endswith("_metadata"):
                extra_keys.append(k)
    extras: dict[str, list[Any]] = {k: [] for k in extra_keys}

    for s in specs:
        errors: list[dict[str, str]] = []
        record_crs = s.crs
        got: dict[str, CogMetadata] = {}
        for band, (href, index) in s.assets.items():
            h = headers.get(href)
            try:
                if h is None:
                    raise RasterduckError("header was not fetched")
                if isinstance(h, BaseException):
                    raise h
                meta = metadata_from_header(h, index)
                if record_crs is None:
                    record_crs = meta.crs
                elif meta.crs is not None and meta.crs != record_crs and _epsg_of(meta.crs) != _epsg_of(record_crs):
                    raise RasterduckError(f"CRS {meta.crs[:40]} differs from the record's {record_crs[:40]}")
                got[band] = meta
            except Exception as exc:  # one bad asset never aborts the build
                errors.append({"band": band, "href": href, "message": f"{type(exc).__name__}: {exc}"})
        footprint = s.geometry
        first = next(iter(got.values()), None)
        if footprint is None and first is not None and record_crs is not None:
            try:
                footprint, _ = record_footprint(first.image_width, first.image_height, first.affine, record_crs)
            except Exception as exc:
                errors.append({"band": "", "href": "", "message": f"footprint: {exc}"})
        rows["id"].append(s.id)
        rows["datetime"].append(s.datetime)
        rows["geometry"].append(footprint)
        rows["assets"].append({b: ({"href": h, "band_index": i} if b in s.assets else None) for b, (h, i) in
                               ((b, s.assets.get(b, ("", 0))) for b in bands)} if bands else {})
        epsg = _epsg_of(record_crs)
        rows["proj:epsg"].append(epsg)
        rows["crs"].append(record_crs)
        rows["build_errors"].append(errors)
        for b in bands:
            metas[b].append(got.get(b))
        for k in extra_keys:
            extras[k].append(s.properties.get(k))

    assets_type = pa.struct([(b, ASSET_TYPE) for b in bands]) if bands else pa.struct([])
    for a in rows["assets"]:
        for b in bands:
            if a.get(b) is not None and not a[b]["href"]:
                a[b] = None
    arrays: list[pa.Array] = [
        array_of(rows["id"], pa.string()),
        _timestamps(rows["datetime"]),
        array_of(rows["geometry"], pa.binary()),
        array_of(rows["assets"], assets_type),
        array_of(rows["proj:epsg"], pa.int32()),
        array_of(rows["crs"], pa.string()),
    ]
    fields: list[pa.Field] = [
        pa.field("id", pa.string()), pa.field("datetime", pa.timestamp("us")), GEOMETRY_FIELD,
        pa.field("assets", assets_type), pa.field("proj:epsg", pa.int32()), pa.field("crs", pa.string()),
    ]
    for b in bands:
        arrays.append(array_of([m.to_dict() if m else None for m in metas[b]], METADATA_TYPE))
        fields.append(pa.field(f"{b}_metadata", METADATA_TYPE))
    bbox = bbox_column(rows["geometry"])
    for k in extra_keys:
        if k == "bbox":  # a scalar property named bbox: Collection replaces it in place with the covering
            arrays.append(bbox)
            fields.append(pa.field(k, BBOX_TYPE))
            continue
        try:
            arr = infer_array(extras[k])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = array_of([None if v is None else str(v) for v in extras[k]], pa.string())
        arrays.append(arr)
        fields.append(pa.field(k, arr.type))
    arrays.append(array_of(rows["build_errors"], ERRORS_TYPE))
    fields.append(pa.field("build_errors", ERRORS_TYPE))
    if "bbox" not in extra_keys:  # last, where Collection would append it
        arrays.append(bbox)
        fields.append(pa.field("bbox", BBOX_TYPE))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
