"""Per-band COG metadata: the `{band}_metadata` struct of a collection, shared with rasteret.

The first 17 fields, their order and Arrow types are rasteret's schema contract, so a collection
written by either tool reads in the other. Fields after them are rasterduck's additions (byte order,
JPEG tables, LERC parameters, scale/offset, overviews, internal mask); readers that do not know them
ignore them, and rasteret-written structs simply lack them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import CollectionError, UnsupportedTiffError
from ..tiff.model import ImageIFD, TiffHeader, TileFormat
from .arrowbuild import array_of

LEVEL_TYPE = pa.struct(
    [
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("tile_width", pa.int32()),
        ("tile_height", pa.int32()),
        ("tile_offsets", pa.list_(pa.int64())),
        ("tile_byte_counts", pa.list_(pa.int64())),
    ]
)

RASTERET_FIELDS: list[pa.Field] = [
    pa.field("image_width", pa.int32()),
    pa.field("image_height", pa.int32()),
    pa.field("tile_width", pa.int32()),
    pa.field("tile_height", pa.int32()),
    pa.field("dtype", pa.string()),
    pa.field("transform", pa.list_(pa.float64())),
    pa.field("predictor", pa.int32()),
    pa.field("compression", pa.int32()),
    pa.field("tile_offsets", pa.list_(pa.int64())),
    pa.field("tile_byte_counts", pa.list_(pa.int64())),
    pa.field("pixel_scale", pa.list_(pa.float64())),
    pa.field("tiepoint", pa.list_(pa.float64())),
    pa.field("nodata", pa.float64()),
    pa.field("samples_per_pixel", pa.int32()),
    pa.field("planar_configuration", pa.int32()),
    pa.field("photometric", pa.int32()),
    pa.field("extra_samples", pa.list_(pa.int32())),
]
EXTRA_FIELDS: list[pa.Field] = [
    pa.field("byte_order", pa.string()),
    pa.field("bits_per_sample", pa.int32()),
    pa.field("jpeg_tables", pa.binary()),
    pa.field("lerc_parameters", pa.list_(pa.int32())),
    pa.field("scale", pa.float64()),
    pa.field("offset", pa.float64()),
    pa.field("overviews", pa.list_(LEVEL_TYPE)),
    pa.field("mask", LEVEL_TYPE),
]
METADATA_TYPE = pa.struct(RASTERET_FIELDS + EXTRA_FIELDS)


@dataclass(frozen=True)
class Level:
    """Tile table of one reduced-resolution image or mask."""

    image_width: int
    image_height: int
    tile_width: int
    tile_height: int
    tile_offsets: np.ndarray
    tile_byte_counts: np.ndarray


@dataclass(frozen=True, eq=False)
class CogMetadata:
    """What a reader needs to fetch and decode one band's tiles, without touching the file header."""

    image_width: int
    image_height: int
    tile_width: int
    tile_height: int
    dtype: str
    # rasteret order (scale_x, translate_x, scale_y, translate_y); a rotated/sheared grid is stored as the
    # 6-value rasterio affine (a, b, c, d, e, f), which rasteret refuses with a clear error
    transform: tuple[float, ...]
    predictor: int
    compression: int
    tile_offsets: np.ndarray  # int64, one plane, row-major tiles
    tile_byte_counts: np.ndarray
    pixel_scale: tuple[float, ...] | None = None
    tiepoint: tuple[float, ...] | None = None
    nodata: float | None = None
    samples_per_pixel: int = 1
    planar_configuration: int = 1
    photometric: int = 1
    extra_samples: tuple[int, ...] | None = None
    byte_order: str = "<"
    bits_per_sample: int | None = None
    jpeg_tables: bytes | None = None
    lerc_parameters: tuple[int, ...] | None = None
    scale: float | None = None
    offset: float | None = None
    overviews: tuple[Level, ...] = ()
    mask: Level | None = None
    crs: str | None = field(default=None)  # from the record ("EPSG:32633" or WKT), not the struct

    @cached_property  # read for every pair a batch plans (frozen fields: computed once per band)
    def affine(self) -> tuple[float, float, float, float, float, float]:
        """The transform as a rasterio-order affine (a, b, c, d, e, f)."""
        t = self.transform
        if len(t) == 6:
            return (t[0], t[1], t[2], t[3], t[4], t[5])
        sx, tx, sy, ty = t
        return (sx, 0.0, tx, 0.0, sy, ty)

    @property
    def tiles_across(self) -> int:
        return -(-self.image_width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.image_height // self.tile_height)

    def tile_format(self) -> TileFormat:
        """The decode recipe of this band's tiles (byte order and sample count included)."""
        dt = np.dtype(self.dtype)
        order = "|" if dt.itemsize == 1 else self.byte_order
        chunky = self.planar_configuration == 1
        return TileFormat(
            compression=self.compression,
            predictor=self.predictor,
            dtype=order + dt.str[1:],
            tile_width=self.tile_width,
            tile_height=self.tile_height,
            samples=self.samples_per_pixel if chunky else 1,
            bits_per_sample=self.bits_per_sample or dt.itemsize * 8,
            photometric=self.photometric,
            jpeg_tables=self.jpeg_tables,
            lerc_parameters=self.lerc_parameters,
        )

    def fill_value(self) -> int | float:
        """The value of pixels outside the AOI or the data: nodata, else 0 (GDAL's mask fill)."""
        if self.nodata is None:
            return 0
        return self.nodata

    # ---- Arrow ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """A dict matching METADATA_TYPE (for pa.array(..., type=METADATA_TYPE))."""

        def level(lv: Level | None) -> dict[str, object] | None:
            if lv is None:
                return None
            return {
                "image_width": lv.image_width,
                "image_height": lv.image_height,
                "tile_width": lv.tile_width,
                "tile_height": lv.tile_height,
                "tile_offsets": lv.tile_offsets.tolist(),
                "tile_byte_counts": lv.tile_byte_counts.tolist(),
            }

        return {
            "image_width": self.image_width,
            "image_height": self.image_height,
            "tile_width": self.tile_width,
            "tile_height": self.tile_height,
            "dtype": self.dtype,
            "transform": list(self.transform),
            "predictor": self.predictor,
            "compression": self.compression,
            "tile_offsets": self.tile_offsets.tolist(),
            "tile_byte_counts": self.tile_byte_counts.tolist(),
            "pixel_scale": list(self.pixel_scale) if self.pixel_scale is not None else None,
            "tiepoint": list(self.tiepoint) if self.tiepoint is not None else None,
            "nodata": self.nodata,
            "samples_per_pixel": self.samples_per_pixel,
            "planar_configuration": self.planar_configuration,
            "photometric": self.photometric,
            "extra_samples": list(self.extra_samples) if self.extra_samples else None,
            "byte_order": self.byte_order,
            "bits_per_sample": self.bits_per_sample,
            "jpeg_tables": self.jpeg_tables,
            "lerc_parameters": list(self.lerc_parameters) if self.lerc_parameters else None,
            "scale": self.scale,
            "offset": self.offset,
            "overviews": [level(o) for o in self.overviews],
            "mask": level(self.mask),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], crs: str | None = None) -> CogMetadata:
        """Read a struct value (ours or rasteret's); validates what the reader relies on."""
        try:
            width = int(d.get("image_width", d.get("width")))
            height = int(d.get("image_height", d.get("height")))
            tw, th = int(d["tile_width"]), int(d["tile_height"])
            dtype = str(d["dtype"])
            transform = tuple(float(v) for v in d["transform"])
            offsets = np.asarray(d["tile_offsets"], dtype=np.int64)
            counts = np.asarray(d["tile_byte_counts"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CollectionError(f"band metadata lacks a required field or has a wrong type: {exc}") from exc
        return cls(
            image_width=width,
            image_height=height,
            tile_width=tw,
            tile_height=th,
            dtype=dtype,
            transform=normalize_transform(transform),
            predictor=int(d.get("predictor") or 1),
            compression=int(d.get("compression") or 1),
            tile_offsets=offsets,
            tile_byte_counts=counts,
            pixel_scale=_tuple(d.get("pixel_scale")),
            tiepoint=_tuple(d.get("tiepoint")),
            nodata=_nodata(d.get("nodata")),
            samples_per_pixel=int(d.get("samples_per_pixel") or 1),
            planar_configuration=int(d.get("planar_configuration") or 1),
            photometric=int(d["photometric"]) if d.get("photometric") is not None else 1,
            extra_samples=tuple(int(v) for v in d["extra_samples"]) if d.get("extra_samples") else None,
            byte_order=str(d.get("byte_order") or "<"),
            bits_per_sample=int(d["bits_per_sample"]) if d.get("bits_per_sample") else None,
            jpeg_tables=d.get("jpeg_tables") or None,
            lerc_parameters=tuple(int(v) for v in d["lerc_parameters"]) if d.get("lerc_parameters") else None,
            scale=_float(d.get("scale")),
            offset=_float(d.get("offset")),
            overviews=tuple(_level(o) for o in (d.get("overviews") or ()) if o),
            mask=_level(d["mask"]) if d.get("mask") else None,
            crs=crs,
        )


def _tuple(v: Any) -> tuple[float, ...] | None:
    return tuple(float(x) for x in v) if v is not None else None


def _float(v: Any) -> float | None:
    return float(v) if v is not None else None


def _nodata(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f


def _level(d: Mapping[str, Any]) -> Level:
    return Level(
        int(d["image_width"]),
        int(d["image_height"]),
        int(d["tile_width"]),
        int(d["tile_height"]),
        np.asarray(d["tile_offsets"], dtype=np.int64),
        np.asarray(d["tile_byte_counts"], dtype=np.int64),
    )


def normalize_transform(t: tuple[float, ...]) -> tuple[float, ...]:
    """Accept rasteret's 4-tuple or a rasterio 6-tuple (a,b,c,d,e,f); axis-aligned 6-tuples become 4."""
    if len(t) == 4:
        return (t[0], t[1], t[2], t[3])
    if len(t) in (6, 9):
        a, b, c, d, e, f = t[:6]
        if a * e - b * d == 0:
            raise CollectionError(f"degenerate transform {t[:6]}")
        if math.isclose(b, 0.0, abs_tol=1e-12) and math.isclose(d, 0.0, abs_tol=1e-12):
            return (a, c, e, f)
        return (a, b, c, d, e, f)
    raise CollectionError(f"transform must have 4 or 6 values, got {len(t)}")


def _plane_slice(image: ImageIFD, band_index: int) -> tuple[np.ndarray, np.ndarray]:
    tpp = image.tiles_per_plane
    if image.planar_configuration == 2:
        if band_index >= image.samples_per_pixel:
            raise CollectionError(f"band_index {band_index} but the file has {image.samples_per_pixel} samples")
        sl = slice(band_index * tpp, (band_index + 1) * tpp)
        return image.offsets[sl], image.byte_counts[sl]
    return image.offsets[:tpp], image.byte_counts[:tpp]


def _level_of(image: ImageIFD, band_index: int) -> Level:
    offs, counts = _plane_slice(image, band_index if image.samples_per_pixel > 1 else 0)
    return Level(image.width, image.height, image.tile_width, image.tile_height, offs, counts)


def metadata_from_header(header: TiffHeader, band_index: int = 0) -> CogMetadata:
    """Per-band metadata of one sample of a parsed file; raises for what the reader cannot serve."""
    im, geo = header.image, header.geo
    if im.dtype is None:
        raise UnsupportedTiffError(
            f"sample type not supported: SampleFormat={im.sample_format}, BitsPerSample={im.bits_per_sample}",
            url=header.url,
        )
    if not 0 <= band_index < im.samples_per_pixel:
        raise CollectionError(
            f"band_index {band_index} out of range: the file has {im.samples_per_pixel} samples", url=header.url
        )
    # Without an affine georeferencing GDAL reads in pixel space (identity transform, no CRS); so do we.
    a, b, c, d, e, f = geo.transform if geo.transform is not None else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    transform: tuple[float, ...] = (a, c, e, f) if b == 0.0 and d == 0.0 else (a, b, c, d, e, f)
    offsets, counts = _plane_slice(im, band_index)
    mask = _level_of(header.masks[0], 0) if header.masks else None
    return CogMetadata(
        image_width=im.width,
        image_height=im.height,
        tile_width=im.tile_width,
        tile_height=im.tile_height,
        dtype=im.dtype,
        transform=transform,
        predictor=im.predictor,
        compression=im.compression,
        tile_offsets=offsets,
        tile_byte_counts=counts,
        pixel_scale=geo.pixel_scale,
        tiepoint=geo.tiepoint,
        nodata=geo.nodata,
        samples_per_pixel=im.samples_per_pixel,
        planar_configuration=im.planar_configuration,
        photometric=im.photometric,
        extra_samples=im.extra_samples or None,
        byte_order=header.byte_order,
        bits_per_sample=im.bits_per_sample[0],
        jpeg_tables=im.jpeg_tables,
        lerc_parameters=im.lerc_parameters,
        scale=geo.scales[band_index] if geo.scales else None,
        offset=geo.offsets[band_index] if geo.offsets else None,
        overviews=tuple(_level_of(o, band_index) for o in header.overviews),
        mask=mask,
        crs=header_crs(header) if geo.transform is not None else None,
    )


def header_crs(header: TiffHeader) -> str | None:
    """'EPSG:n' when the keys name a code, else the WKT they define, else None."""
    if header.geo.epsg is not None:
        return f"EPSG:{header.geo.epsg}"
    return header.geo.crs_wkt


def metadata_array(items: list[CogMetadata | None]) -> pa.Array:
    """An Arrow StructArray of METADATA_TYPE (nulls where a band is missing or failed)."""
    return array_of([m.to_dict() if m is not None else None for m in items], METADATA_TYPE)
