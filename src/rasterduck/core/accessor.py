"""RasterAccessor: the data-loading handle of one record (row) of a Collection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .bands import candidates
from .metadata import CogMetadata
from .schema import record_crs


@dataclass
class RasterInfo:
    """One record's facts: id, time, footprint, raster CRS, assets and per-band metadata dicts."""

    id: str
    datetime: dt.datetime | None
    footprint: bytes | None
    bbox: tuple[float, float, float, float] | None
    crs: str | None
    assets: dict[str, dict[str, Any]]
    band_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    cloud_cover: float = 0.0
    collection: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RasterInfo:
        """Build from a collection row as Python values (missing optional columns are fine)."""
        bbox = row.get("bbox")
        crs = record_crs(row.get("proj:epsg"), row.get("crs"))
        assets = {k: v for k, v in (row.get("assets") or {}).items() if v}
        metas = {k[: -len("_metadata")]: v for k, v in row.items() if k.endswith("_metadata") and v}
        return cls(
            id=str(row.get("id")),
            datetime=row.get("datetime"),
            footprint=row.get("geometry"),
            bbox=(bbox["xmin"], bbox["ymin"], bbox["xmax"], bbox["ymax"]) if bbox else None,
            crs=crs,
            assets=assets,
            band_metadata=metas,
            cloud_cover=float(row.get("eo:cloud_cover") or 0.0),
            collection=str(row.get("collection") or ""),
        )


def resolve_href(asset: dict[str, Any]) -> str | None:
    """The asset's URL: `href`, else an alternate (s3, https, http first), else None."""
    if asset.get("href"):
        return str(asset["href"])
    alternates = asset.get("alternate") or {}
    for key in ("s3", "aws", "https", "http", "cloudfront"):
        if isinstance(alternates.get(key), dict) and alternates[key].get("href"):
            return str(alternates[key]["href"])
    for alt in alternates.values():
        if isinstance(alt, dict) and alt.get("href"):
            return str(alt["href"])
    return None


class RasterAccessor:
    """Data-loading handle for a single record: band metadata lookup, footprint test, pixel reads."""

    def __init__(self, info: RasterInfo, data_source: str = "") -> None:
        self.info = info
        self.data_source = data_source
        self._meta_cache: dict[str, tuple[CogMetadata | None, str | None, int | None]] = {}

    def __repr__(self) -> str:
        return f"RasterAccessor(id={self.info.id!r}, bands={sorted(self.info.band_metadata)})"

    @property
    def id(self) -> str:
        return self.info.id

    def try_get_band_cog_metadata(self, band_code: str) -> tuple[CogMetadata | None, str | None, int | None]:
        """(metadata, url, band_index) for a band code; (None, None, None) when the record lacks it."""
        if band_code in self._meta_cache:
            return self._meta_cache[band_code]
        result: tuple[CogMetadata | None, str | None, int | None] = (None, None, None)
        for key in candidates(band_code, self.data_source or self.info.collection):
            asset = self.info.assets.get(key)
            if not asset:
                continue
            meta = self.info.band_metadata.get(band_code) or self.info.band_metadata.get(key)
            href = resolve_href(asset)
            if meta is None or href is None:
                continue
            result = (CogMetadata.from_dict(meta, crs=self.info.crs), href, int(asset.get("band_index") or 0))
            break
        self._meta_cache[band_code] = result
        return result

    def intersects(self, geometry: Any) -> bool:
        """True when this record's bbox overlaps the geometry's bbox (lon/lat, edges touching count)."""
        from .geometry import to_shapely

        if self.info.bbox is None:
            return False
        g = to_shapely(geometry)
        x0, y0, x1, y1 = g.bounds
        bx0, by0, bx1, by1 = self.info.bbox
        return bx1 >= x0 and bx0 <= x1 and by1 >= y0 and by0 <= y1

    async def load_bands(
        self,
        geometries: Any,
        band_codes: Sequence[str],
        max_concurrent: int = 50,
        for_xarray: bool = True,
        backend: object | None = None,
        target_crs: int | str | None = None,
        geometry_crs: int | str | None = 4326,
        all_touched: bool = False,
        output: str | None = None,
        **options: Any,
    ) -> Any:
        """Read the bands under every AOI in one planned batch (each tile fetched and decoded once).

        `geometries`: GeoArrow (WKB or native) array, shapely geometries, WKB, or bbox tuples, in
        `geometry_crs` (None: the raster's CRS or pixel space). Returns an xarray.Dataset
        (`for_xarray=True`), a GeoDataFrame (`False`), or with `output="results"` the list of ReadResult /
        None (AOI misses the raster) per geometry. `target_crs` warps onto one shared grid
        (`resampling="nearest"` or `"bilinear"`, optional `resolution`). Native dtype always.
        """
        from .outputs import load_bands_output

        return await load_bands_output(
            self, geometries, list(band_codes), max_concurrent=max_concurrent, for_xarray=for_xarray,
            backend=backend, target_crs=target_crs, geometry_crs=geometry_crs, all_touched=all_touched,
            output=output, **options,
        )
