"""Plain values that describe a TIFF: one image (IFD), its georeferencing, the whole header.

These are format facts only, no I/O; the decoder needs nothing but a `TileFormat`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# TIFF Compression tag values we know by name.
COMPRESSION_NAMES: dict[int, str] = {
    1: "none",
    5: "lzw",
    6: "ojpeg",
    7: "jpeg",
    8: "deflate",
    32773: "packbits",
    32946: "deflate",
    34887: "lerc",
    34925: "lzma",
    50000: "zstd",
    50001: "webp",
    50002: "jpegxl",
    52546: "jpegxl",
}


@dataclass(frozen=True)
class TileFormat:
    """Everything needed to turn one stored tile (or strip) into pixels."""

    compression: int
    predictor: int
    dtype: str  # numpy dtype *with* byte order of the stored data, e.g. "<u2", ">f4", "|u1"
    tile_width: int
    tile_height: int
    samples: int  # samples interleaved in one tile: samples_per_pixel if chunky, else 1
    bits_per_sample: int = 0  # 0 = itemsize*8; 1 for bilevel data
    photometric: int = 1
    jpeg_tables: bytes | None = None
    lerc_parameters: tuple[int, ...] | None = None  # (version, additional compression[, level])

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def tile_nbytes(self) -> int:
        """Decoded size in bytes of a full (padded) tile."""
        return self.tile_width * self.tile_height * self.samples * self.np_dtype.itemsize


@dataclass(frozen=True)
class ImageIFD:
    """One image directory: full resolution, an overview, or a mask."""

    index: int  # position in the IFD chain
    width: int
    height: int
    tile_width: int  # strips: the image width
    tile_height: int  # strips: RowsPerStrip (clamped to the height)
    tiled: bool
    bits_per_sample: tuple[int, ...]
    sample_format: int  # 1 uint, 2 int, 3 float, 4 undefined, 5 complex int, 6 complex float
    samples_per_pixel: int
    planar_configuration: int  # 1 chunky, 2 separate
    compression: int
    predictor: int
    photometric: int
    extra_samples: tuple[int, ...]
    subfile_type: int  # NewSubfileType bits: 1 reduced resolution, 4 transparency mask
    offsets: np.ndarray  # int64; planar=2: [plane0 tiles..., plane1 tiles...]
    byte_counts: np.ndarray  # int64
    byte_order: str  # "<" or ">"
    dtype: str | None  # numpy name ("uint16"); None when the sample type is not an array dtype we read
    jpeg_tables: bytes | None = None
    lerc_parameters: tuple[int, ...] | None = None
    ycbcr_subsampling: tuple[int, ...] | None = None
    has_colormap: bool = False

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def tiles_down(self) -> int:
        return -(-self.height // self.tile_height)

    @property
    def tiles_per_plane(self) -> int:
        return self.tiles_across * self.tiles_down

    @property
    def is_mask(self) -> bool:
        return bool(self.subfile_type & 4)

    @property
    def is_overview(self) -> bool:
        return bool(self.subfile_type & 1) and not self.is_mask

    def tile_format(self) -> TileFormat:
        """The decode recipe for this image's tiles."""
        if self.dtype is None:
            raise ValueError("image has no readable dtype")
        order = "|" if np.dtype(self.dtype).itemsize == 1 else self.byte_order
        return TileFormat(
            compression=self.compression,
            predictor=self.predictor,
            dtype=order + np.dtype(self.dtype).str[1:],
            tile_width=self.tile_width,
            tile_height=self.tile_height,
            samples=self.samples_per_pixel if self.planar_configuration == 1 else 1,
            bits_per_sample=self.bits_per_sample[0] if self.bits_per_sample else 0,
            photometric=self.photometric,
            jpeg_tables=self.jpeg_tables,
            lerc_parameters=self.lerc_parameters,
        )


@dataclass(frozen=True)
class GeoReference:
    """Georeferencing read from the GeoTIFF tags and GDAL's private tags."""

    transform: tuple[float, float, float, float, float, float] | None  # affine a,b,c,d,e,f (GDAL area convention)
    epsg: int | None  # None when the keys define no EPSG code (user-defined or missing)
    crs_wkt: str | None  # WKT for user-defined CRSs built from the keys; None when epsg is set
    raster_type: int  # 1 PixelIsArea, 2 PixelIsPoint
    pixel_scale: tuple[float, ...] | None
    tiepoint: tuple[float, ...] | None
    model_transformation: tuple[float, ...] | None
    geokeys: dict[int, object] = field(default_factory=dict)
    nodata: float | None = None
    scales: tuple[float, ...] | None = None  # per band, from GDAL_METADATA
    offsets: tuple[float, ...] | None = None
    descriptions: tuple[str | None, ...] | None = None
    gcp_count: int = 0
    problem: str | None = None  # why transform is None although tags exist (rotation, GCPs, ...)


@dataclass(frozen=True)
class TiffHeader:
    """A parsed TIFF header: the full-resolution image, overviews and masks, georeferencing."""

    url: str
    byte_order: str
    bigtiff: bool
    image: ImageIFD
    overviews: tuple[ImageIFD, ...]
    masks: tuple[ImageIFD, ...]
    geo: GeoReference
    requests: int  # range requests the parse took
    bytes_read: int
