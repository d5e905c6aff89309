"""Which pixels GDAL calls valid: the mask rules a reader must follow to equal `rasterio.mask.mask`.

`rasterio.mask.mask` reads with `masked=True`, so besides the AOI it fills every pixel that GDAL's mask
band of that band says is invalid. GDAL picks the mask band in this order (RFC 15):
  1. an internal mask IFD (NewSubfileType bit 4) of the full-resolution image: per dataset;
  2. a nodata value: per band, pixels equal to it (NaN-aware for floats);
  3. an alpha sample, when the file has 2 samples (gray + alpha) or 4 (RGB + alpha) and the last one is
     declared alpha by ExtraSamples: it masks the other samples where it is 0; the alpha band itself
     is all-valid;
  4. otherwise all pixels are valid.

Internal masks are tiled like the image and, as GDAL writes them, 1-bit samples compressed with Deflate
(or left uncompressed when the image is). The collection keeps only their tile table, so the stream is
recognised by its bytes: a zlib header means Deflate, a ZSTD frame magic means ZSTD, anything else is raw;
1-bit and 8-bit masks are told apart by the decoded size.
"""

from __future__ import annotations

import enum
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import DecodeError
from .metadata import CogMetadata, Level

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ALPHA_EXTRA = (1, 2)  # ExtraSamples: associated and unassociated alpha


class MaskKind(enum.Enum):
    """Where a band's validity comes from (GDAL's mask flags)."""

    ALL_VALID = "all_valid"
    INTERNAL = "internal"  # the internal mask IFD
    NODATA = "nodata"
    ALPHA = "alpha"  # another sample of the same pixel


def internal_mask(meta: CogMetadata) -> Level | None:
    """The full-resolution internal mask of the band's file, or None (a mask of another size is ignored)."""
    m = meta.mask
    if m is None or m.image_width != meta.image_width or m.image_height != meta.image_height:
        return None
    if m.tile_width <= 0 or m.tile_height <= 0:
        return None
    return m


def alpha_sample(meta: CogMetadata) -> int | None:
    """Index of the alpha sample GDAL would use as the mask of the other samples, or None."""
    spp = meta.samples_per_pixel
    extra = meta.extra_samples or ()
    if spp not in (2, 4) or not extra:
        return None
    last = spp - 1
    first_extra = spp - len(extra)
    if first_extra > last or extra[last - first_extra] not in _ALPHA_EXTRA:
        return None
    return last


def mask_kind(meta: CogMetadata, band_index: int) -> MaskKind:
    """GDAL's mask source for sample `band_index` of the file described by `meta`."""
    if internal_mask(meta) is not None:
        return MaskKind.INTERNAL
    if meta.nodata is not None:
        return MaskKind.NODATA
    alpha = alpha_sample(meta)
    if alpha is not None and band_index != alpha:
        return MaskKind.ALPHA
    return MaskKind.ALL_VALID


def decode_mask_tile(data: bytes | bytearray | memoryview, tile_width: int, tile_height: int,
                     rows: int) -> np.ndarray:
    """A (rows, tile_width) bool array (True = valid) from one stored internal-mask tile or strip."""
    raw = _mask_bytes(bytes(data), tile_width * tile_height)
    one_bit_row = -(-tile_width // 8)
    if raw.size > one_bit_row * tile_height:  # more than a 1-bit tile holds: 8-bit samples
        if raw.size < rows * tile_width:
            raise DecodeError(f"mask tile has {raw.size} bytes; {rows} rows of 8-bit samples need more")
        return raw[: rows * tile_width].reshape(rows, tile_width) != 0
    if raw.size < rows * one_bit_row:
        raise DecodeError(f"mask tile has {raw.size} bytes; {rows} rows of 1-bit samples need {rows * one_bit_row}")
    bits = np.unpackbits(raw[: rows * one_bit_row].reshape(rows, one_bit_row), axis=1, count=tile_width)
    return bits.astype(bool)


def _mask_bytes(data: bytes, limit: int) -> np.ndarray:
    """Decompress a mask stream (zlib, ZSTD or raw) to at most `limit` bytes."""
    if len(data) >= 2 and (data[0] & 0x0F) == 8 and (data[0] << 8 | data[1]) % 31 == 0:
        try:
            out = zlib.decompressobj().decompress(data, limit)
        except zlib.error as exc:
            raise DecodeError(f"corrupt deflate mask tile: {exc}") from exc
        return np.frombuffer(out, np.uint8)
    if data[:4] == _ZSTD_MAGIC:
        import imagecodecs

        try:
            out = bytes(imagecodecs.zstd_decode(data))
        except Exception as exc:
            raise DecodeError(f"corrupt zstd mask tile: {exc}") from exc
        return np.frombuffer(out, np.uint8)[:limit]
    return np.frombuffer(data, np.uint8)[:limit]


def nodata_valid(data: np.ndarray, nodata: float) -> np.ndarray:
    """True where at least one band of `data` (bands, h, w) differs from `nodata` (NaN-aware).

    The value is compared in the band's dtype, as GDAL's nodata mask does (float32 bands compare with
    float32(nodata)); this is rasterio's dataset-mask rule (a pixel is valid if any band is).
    """
    kind, value = _nodata_in(data.dtype.str, nodata)
    if kind == "none":
        return np.ones(data.shape[1:], dtype=bool)
    # band by band, not np.any(axis=0): a stream's windows are small and the reduction's set-up dominated
    out = ~np.isnan(data[0]) if kind == "nan" else data[0] != value
    for band in data[1:]:
        out |= ~np.isnan(band) if kind == "nan" else band != value
    return out


@lru_cache(maxsize=256)
def _nodata_in(dtype: str, nodata: float) -> tuple[str, Any]:
    """How a nodata compares in a band dtype: ("nan", None), ("none", None) when the type cannot hold it
    (it then matches nothing), else ("value", the nodata as a scalar of the dtype)."""
    dt = np.dtype(dtype)
    if dt.kind == "f" and np.isnan(nodata):
        return "nan", None
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not (info.min <= nodata <= info.max) or nodata != int(nodata):
            return "none", None
    return "value", dt.type(nodata)


def fill_scalar(dtype: np.dtype, fill: float | int) -> np.generic:
    """The fill value as a scalar of the band dtype (what rasterio's `filled(nodata)` stores)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if isinstance(fill, float) and (np.isnan(fill) or fill != int(fill)):
            return dtype.type(0)
        return dtype.type(min(max(int(fill), info.min), info.max))
    return dtype.type(fill)
