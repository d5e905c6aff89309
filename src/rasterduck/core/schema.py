"""The record schema shared with rasteret, and the checks a collection table must pass."""

from __future__ import annotations

import json

import pyarrow as pa

from ..errors import CollectionError
from .metadata import METADATA_TYPE

ASSET_TYPE = pa.struct([("href", pa.string()), ("band_index", pa.int32())])
BBOX_TYPE = pa.struct([("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())])
ERRORS_TYPE = pa.list_(pa.struct([("band", pa.string()), ("href", pa.string()), ("message", pa.string())]))
REQUIRED = ("id", "datetime", "geometry", "assets")
METADATA_SUFFIX = "_metadata"
CRS84_PROJJSON = {
    "$schema": "https://proj.org/schemas/v0.7/projjson.schema.json",
    "type": "GeographicCRS",
    "name": "WGS 84 (CRS84)",
    "datum_ensemble": {
        "name": "World Geodetic System 1984 ensemble",
        "members": [{"name": "World Geodetic System 1984 (Transit)"}, {"name": "World Geodetic System 1984 (G730)"}],
        "ellipsoid": {"name": "WGS 84", "semi_major_axis": 6378137, "inverse_flattening": 298.257223563},
        "accuracy": "2.0",
        "id": {"authority": "EPSG", "code": 6326},
    },
    "coordinate_system": {
        "subtype": "ellipsoidal",
        "axis": [
            {"name": "Geodetic longitude", "abbreviation": "Lon", "direction": "east", "unit": "degree"},
            {"name": "Geodetic latitude", "abbreviation": "Lat", "direction": "north", "unit": "degree"},
        ],
    },
    "id": {"authority": "OGC", "code": "CRS84"},
}
GEOMETRY_FIELD = pa.field(
    "geometry",
    pa.binary(),
    metadata={
        b"ARROW:extension:name": b"geoarrow.wkb",
        b"ARROW:extension:metadata": json.dumps({"crs": CRS84_PROJJSON}).encode(),
    },
)


def record_crs(epsg: int | None, crs: str | None) -> str | None:
    """A record's raster CRS: 'EPSG:n' from its `proj:epsg`, else its `crs` column as stored."""
    return f"EPSG:{int(epsg)}" if epsg is not None else crs


def band_columns(schema: pa.Schema) -> list[str]:
    """Band codes that have a `{band}_metadata` column."""
    return [n[: -len(METADATA_SUFFIX)] for n in schema.names if n.endswith(METADATA_SUFFIX)]


def validate(schema: pa.Schema) -> None:
    """Raise CollectionError naming what is missing or mistyped."""
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise CollectionError(f"collection is missing required column(s) {missing}; has {schema.names}")
    if not pa.types.is_struct(schema.field("assets").type):
        raise CollectionError(f"column 'assets' must be a struct of {{href, band_index}}, got {schema.field('assets').type}")
    if not (pa.types.is_binary(schema.field("geometry").type) or pa.types.is_large_binary(schema.field("geometry").type)):
        raise CollectionError(f"column 'geometry' must be WKB binary, got {schema.field('geometry').type}")
    for band in band_columns(schema):
        t = schema.field(band + METADATA_SUFFIX).type
        if not pa.types.is_struct(t):
            raise CollectionError(f"column '{band}{METADATA_SUFFIX}' must be a struct, got {t}")
        names = {t.field(i).name for i in range(t.num_fields)}
        need = {"tile_offsets", "tile_byte_counts", "tile_width", "tile_height", "dtype", "transform"}
        if not need <= names:
            raise CollectionError(f"column '{band}{METADATA_SUFFIX}' lacks fields {sorted(need - names)}")


__all__ = ["ASSET_TYPE", "BBOX_TYPE", "ERRORS_TYPE", "GEOMETRY_FIELD", "METADATA_TYPE", "band_columns", "validate"]
