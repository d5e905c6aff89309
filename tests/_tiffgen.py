"""Test fixtures for the tile decoder: GeoTIFFs written by rasterio (GDAL) or tifffile, and raw tile access.

`SPECS` lists what the shared corpus lacks (LERC, predictors on every sample size, big-endian data,
chunky multi-band, YCbCr JPEG, WebP, JPEG-XL, ...). `segments()` reads a file's IFD-0 tiles or strips
with tifffile, independently of rasterduck's own header parser.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import tifffile
from rasterio.transform import from_origin

from rasterduck.tiff.model import TileFormat

WIDTH, HEIGHT = 150, 100  # not a multiple of the block sizes: edge tiles and a short last strip


@dataclass(frozen=True)
class Spec:
    """One generated file: what to write and what the written file must declare."""

    name: str
    dtype: str
    count: int = 1
    options: dict[str, Any] = field(default_factory=dict)  # rasterio creation options
    expect: dict[str, Any] = field(default_factory=dict)  # compression/predictor/byteorder/... to verify
    content: str = "noise"  # noise | smooth | bits | alpha | nan_band
    oracle: str = "gdal"  # gdal: exact vs rasterio; lossy: exact vs tifffile, bounded vs GDAL; tifffile
    max_gdal_diff: float = 0.0
    writer: str = "rasterio"


def _tiled(size: int = 64) -> dict[str, Any]:
    return {"tiled": True, "blockxsize": size, "blockysize": size}


SPECS: tuple[Spec, ...] = (
    Spec("deflate_pred2_u16", "uint16", options={"compress": "DEFLATE", "predictor": 2, **_tiled()},
         expect={"compression": 8, "predictor": 2}),
    Spec("zstd_pred2_i16", "int16", options={"compress": "ZSTD", "predictor": 2, **_tiled()},
         expect={"compression": 50000, "predictor": 2}),
    Spec("lzw_pred2_i32", "int32", options={"compress": "LZW", "predictor": 2, **_tiled()},
         expect={"compression": 5, "predictor": 2}),
    Spec("lzma_u32", "uint32", options={"compress": "LZMA", **_tiled()}, expect={"compression": 34925}),
    # GDAL writes LZMA without a predictor; it reads one (libtiff's LZMA runs predictors)
    Spec("lzma_pred2_u16_tifffile", "uint16", options={"compression": "lzma", "predictor": 2, "tile": (64, 64)},
         expect={"compression": 34925, "predictor": 2}, writer="tifffile"),
    Spec("lzma_pred3_f32_tifffile", "float32", options={"compression": "lzma", "predictor": 3, "tile": (64, 64)},
         expect={"compression": 34925, "predictor": 3}, writer="tifffile"),
    Spec("deflate_pred2_i8", "int8", options={"compress": "DEFLATE", "predictor": 2, **_tiled()},
         expect={"compression": 8, "predictor": 2, "dtype": "int8"}),
    Spec("zstd_pred2_i64", "int64", options={"compress": "ZSTD", "predictor": 2, **_tiled()},
         expect={"compression": 50000, "predictor": 2, "dtype": "int64"}),
    Spec("deflate_pred2_u64", "uint64", options={"compress": "DEFLATE", "predictor": 2, **_tiled()},
         expect={"compression": 8, "predictor": 2, "dtype": "uint64"}),
    Spec("none_u32", "uint32", options={"compress": "NONE", **_tiled(32)}, expect={"compression": 1}),
    Spec("zstd_pred3_f32", "float32", options={"compress": "ZSTD", "predictor": 3, **_tiled()},
         expect={"compression": 50000, "predictor": 3}),
    Spec("deflate_pred3_f64", "float64", options={"compress": "DEFLATE", "predictor": 3, **_tiled()},
         expect={"compression": 8, "predictor": 3}),
    Spec("lzw_pred2_f32", "float32", options={"compress": "LZW", "predictor": 2, **_tiled()},
         expect={"compression": 5, "predictor": 2}),
    Spec("none_f64", "float64", options={"compress": "NONE", **_tiled(16)}, expect={"compression": 1}),
    Spec("deflate_pred3_f16", "float32", options={"compress": "DEFLATE", "predictor": 3, "nbits": 16, **_tiled()},
         expect={"compression": 8, "predictor": 3, "dtype": "float16"}),
    Spec("zstd_pred2_f16", "float32", options={"compress": "ZSTD", "predictor": 2, "nbits": 16, **_tiled()},
         expect={"compression": 50000, "predictor": 2, "dtype": "float16"}),
    Spec("pixel_pred2_u16x4", "uint16", 4, {"compress": "DEFLATE", "predictor": 2, "interleave": "pixel", **_tiled()},
         expect={"compression": 8, "predictor": 2, "planar": 1, "samples": 4}),
    Spec("pixel_pred2_u8x3", "uint8", 3, {"compress": "LZW", "predictor": 2, "interleave": "pixel", **_tiled()},
         expect={"compression": 5, "predictor": 2, "planar": 1, "samples": 3}),
    Spec("pixel_pred3_f32x3", "float32", 3, {"compress": "ZSTD", "predictor": 3, "interleave": "pixel", **_tiled()},
         expect={"compression": 50000, "predictor": 3, "planar": 1, "samples": 3}),
    Spec("band_pred2_i16x2", "int16", 2, {"compress": "DEFLATE", "predictor": 2, "interleave": "band", **_tiled()},
         expect={"compression": 8, "predictor": 2, "planar": 2}),
    Spec("be_deflate_pred2_i16", "int16", options={"compress": "DEFLATE", "predictor": 2, "endianness": "BIG", **_tiled()},
         expect={"compression": 8, "predictor": 2, "byteorder": ">"}),
    Spec("be_zstd_pred3_f32", "float32", options={"compress": "ZSTD", "predictor": 3, "endianness": "BIG", **_tiled()},
         expect={"compression": 50000, "predictor": 3, "byteorder": ">"}),
    Spec("be_lzw_pred2_f64", "float64", options={"compress": "LZW", "predictor": 2, "endianness": "BIG", **_tiled()},
         expect={"compression": 5, "predictor": 2, "byteorder": ">"}),
    Spec("be_none_u32", "uint32", options={"compress": "NONE", "endianness": "BIG", **_tiled(32)},
         expect={"compression": 1, "byteorder": ">"}),
    Spec("be_pixel_pred2_u16x3", "uint16", 3,
         {"compress": "ZSTD", "predictor": 2, "interleave": "pixel", "endianness": "BIG", **_tiled()},
         expect={"compression": 50000, "predictor": 2, "byteorder": ">", "samples": 3}),
    Spec("be_deflate_pred3_f16", "float32",
         options={"compress": "DEFLATE", "predictor": 3, "nbits": 16, "endianness": "BIG", **_tiled()},
         expect={"compression": 8, "predictor": 3, "byteorder": ">", "dtype": "float16"}),
    Spec("packbits_u8", "uint8", options={"compress": "PACKBITS", **_tiled(32)}, expect={"compression": 32773}),
    Spec("strip_deflate_pred2_u16", "uint16", options={"compress": "DEFLATE", "predictor": 2, "blockysize": 7},
         expect={"compression": 8, "predictor": 2, "tiled": False}),
    Spec("strip_none_i16", "int16", options={"compress": "NONE", "blockysize": 9},
         expect={"compression": 1, "tiled": False}),
    Spec("bit1_tiled", "uint8", options={"nbits": 1, **_tiled()}, content="bits",
         expect={"compression": 1, "bits": 1}),
    Spec("bit1_strip_deflate", "uint8", options={"nbits": 1, "compress": "DEFLATE", "blockysize": 7}, content="bits",
         expect={"compression": 8, "bits": 1, "tiled": False}),
    Spec("lerc_f32_nan", "float32", options={"compress": "LERC", **_tiled()}, content="nan",
         expect={"compression": 34887, "lerc": (4, 0)}),
    Spec("lerc_deflate_u16", "uint16", options={"compress": "LERC_DEFLATE", **_tiled()},
         expect={"compression": 34887, "lerc": (4, 1)}),
    Spec("lerc_zstd_f64_nan", "float64", options={"compress": "LERC_ZSTD", **_tiled()}, content="nan",
         expect={"compression": 34887, "lerc": (4, 2)}),
    Spec("lerc_i8", "int8", options={"compress": "LERC", **_tiled()},
         expect={"compression": 34887}),
    Spec("lerc_rgba_alpha", "uint8", 4,
         {"compress": "LERC", "interleave": "pixel", "photometric": "RGB", "alpha": "YES", **_tiled()},
         content="alpha", expect={"compression": 34887, "samples": 4, "extrasamples": (2,)}),
    Spec("lerc_pixel_f32x3_nan_band", "float32", 3, {"compress": "LERC", "interleave": "pixel", **_tiled()},
         content="nan_band", expect={"compression": 34887, "samples": 3}),
    Spec("lerc_strip_f32", "float32", options={"compress": "LERC_DEFLATE", "blockysize": 16}, content="nan",
         expect={"compression": 34887, "tiled": False}),
    Spec("jpeg_ycbcr", "uint8", 3, {"compress": "JPEG", "photometric": "YCBCR", **_tiled()}, content="smooth",
         expect={"compression": 7, "photometric": 6}, oracle="lossy", max_gdal_diff=8),
    Spec("jpeg_ycbcr_strip", "uint8", 3, {"compress": "JPEG", "photometric": "YCBCR", "blockysize": 16},
         content="smooth", expect={"compression": 7, "photometric": 6, "tiled": False}, oracle="lossy",
         max_gdal_diff=8),
    Spec("jpeg_rgb", "uint8", 3, {"compress": "JPEG", "photometric": "RGB", "interleave": "pixel", **_tiled()},
         content="smooth", expect={"compression": 7, "photometric": 2}, oracle="lossy", max_gdal_diff=0),
    Spec("jpeg_gray", "uint8", options={"compress": "JPEG", **_tiled()}, content="smooth",
         expect={"compression": 7}, oracle="lossy", max_gdal_diff=0),
    Spec("webp_lossy", "uint8", 3, {"compress": "WEBP", **_tiled()}, content="smooth",
         expect={"compression": 50001}, oracle="lossy", max_gdal_diff=0),
    Spec("webp_lossless_rgba", "uint8", 4, {"compress": "WEBP", "webp_lossless": True, **_tiled()},
         content="alpha", expect={"compression": 50001, "samples": 4}),
    Spec("webp_strip", "uint8", 3, {"compress": "WEBP", "webp_lossless": True, "blockysize": 16},
         expect={"compression": 50001, "tiled": False}),
    # GDAL 3.10 here has no JPEG-XL codec: tifffile writes these and is the only oracle
    Spec("jpegxl_rgb", "uint8", 3, {"compression": ("jpegxl", {"lossless": True}), "tile": (64, 64)},
         content="smooth", expect={"compression": 50002}, oracle="tifffile", writer="tifffile"),
    Spec("jpegxl_u16", "uint16", 1, {"compression": ("jpegxl", {"lossless": True}), "tile": (64, 64)},
         expect={"compression": 50002}, oracle="tifffile", writer="tifffile"),
)


def pixels(spec: Spec, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Deterministic (bands, rows, cols) data that exercises the codec: wide ranges, NaN, edges."""
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    dt = np.dtype(spec.dtype)
    shape = (spec.count, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    if spec.content == "bits":
        return rng.integers(0, 2, shape).astype(dt)
    if spec.content == "smooth":
        base = 128 + 90 * np.sin(xx / 9.0)[None] * np.cos(yy / 13.0)[None] + 20 * np.arange(spec.count)[:, None, None]
        return np.clip(base + rng.normal(0, 4, shape), 0, 255).astype(dt)
    if spec.content == "alpha":
        out = rng.integers(0, 256, shape).astype(dt)
        out[-1] = np.where((xx + yy) % 5 == 0, 0, 255)
        return out
    if dt.kind in "iu":
        info = np.iinfo(dt)
        # big jumps between neighbours so predictor differences wrap around
        out = rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
        out[..., ::7] = info.max
        out[..., 1::7] = info.min
        return out
    vals = rng.normal(0, 1000, shape)
    if spec.options.get("nbits") == 16:
        vals = vals.astype(np.float16)  # representable in half precision
    out = vals.astype(dt)
    if spec.content in ("nan", "noise"):
        out[:, ::11, ::13] = np.nan
    if spec.content == "noise":
        out[:, 3, :5] = [np.inf, -np.inf, -0.0, 1e-40 if dt.itemsize > 2 else 1e-7, 0.0]
    if spec.content == "nan_band":
        out[1, ::5, ::3] = np.nan  # NaN in one band only: GDAL writes one LERC mask per band
    return out


def write(spec: Spec, directory: Path) -> Path:
    """Write the spec's file and return its path."""
    path = directory / f"{spec.name}.tif"
    data = pixels(spec)
    if spec.writer == "tifffile":
        compression = spec.options["compression"]
        args = None
        if isinstance(compression, tuple):
            compression, args = compression
        arr = data[0] if spec.count == 1 else np.moveaxis(data, 0, -1)
        tifffile.imwrite(path, arr, tile=spec.options["tile"], compression=compression, compressionargs=args,
                         predictor=spec.options.get("predictor"),
                         photometric="rgb" if spec.count == 3 else "minisblack")
        return path
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": WIDTH, "height": HEIGHT, "count": spec.count, "dtype": spec.dtype,
        "crs": "EPSG:32633", "transform": from_origin(500000, 4000000, 10, 10),
    }
    profile.update(spec.options)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


@dataclass(frozen=True)
class Segment:
    """One stored tile or strip of IFD 0 and where it lands in the image."""

    index: int
    plane: int
    row0: int
    col0: int
    rows: int  # rows inside the image
    cols: int
    data: bytes  # empty for a sparse block


def tile_format(page: tifffile.TiffPage, byteorder: str) -> TileFormat:
    """The decode recipe for a page, read by tifffile from the tags."""
    bits = int(page.bitspersample)
    if bits == 1:
        dtype = "|u1"
    else:
        dt = np.dtype(page.dtype)
        dtype = ("|" if dt.itemsize == 1 else byteorder) + dt.str[1:]
    lerc = page.tags.get("LercParameters")
    return TileFormat(
        compression=int(page.compression),
        predictor=int(page.predictor),
        dtype=dtype,
        tile_width=page.tilewidth if page.is_tiled else page.imagewidth,
        tile_height=page.tilelength if page.is_tiled else min(page.rowsperstrip, page.imagelength),
        samples=page.samplesperpixel if page.planarconfig == 1 else 1,
        bits_per_sample=bits,
        photometric=int(page.photometric),
        jpeg_tables=page.jpegtables,
        lerc_parameters=tuple(int(v) for v in lerc.value) if lerc is not None else None,
    )


def segments(tf: tifffile.TiffFile) -> Iterator[Segment]:
    """Every IFD-0 tile/strip with its raw bytes, in storage order."""
    page = tf.pages[0]
    fmt = tile_format(page, tf.byteorder)
    height, width = page.imagelength, page.imagewidth
    across = -(-width // fmt.tile_width)
    down = -(-height // fmt.tile_height)
    fh = tf.filehandle
    for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=True)):
        plane, k = divmod(index, across * down)
        ty, tx = divmod(k, across)
        row0, col0 = ty * fmt.tile_height, tx * fmt.tile_width
        data = b""
        if count and offset:
            fh.seek(offset)
            data = fh.read(count)
        yield Segment(index, plane, row0, col0, min(fmt.tile_height, height - row0),
                      min(fmt.tile_width, width - col0), data)
