"""Turn one stored TIFF tile or strip into pixels: decompress, undo the predictor, fix the byte order.

Every codec writes into a buffer no larger than the declared tile (image codecs check the stream's
declared size before decoding), so a hostile stream -- a decompression bomb, a JPEG that claims to be
60000 pixels wide -- costs a few tiles of memory at most, never what the stream claims.
When only the first rows of a tile are needed, the byte codecs stop once those rows are decoded
(Deflate, ZSTD, LZW, LZMA); predictors work row by row, so they apply to that prefix unchanged.

Behaviour copied from libtiff as GDAL uses it (GDAL is the reference reader):
- a stream that decodes to more bytes than the tile holds is truncated, not rejected;
- a stream that decodes to fewer bytes is an error only when it lacks rows the caller asked for;
- predictors are applied only with the codecs for which libtiff applies them (LZW, Deflate, LZMA,
  ZSTD); a predictor tag on an uncompressed, PackBits, JPEG, WebP, LERC or JPEG-XL image is ignored;
- the floating-point predictor's output is in native order whatever the file's byte order;
- LERC masks become NaN in float data, and the alpha band of 8-bit data with an alpha extra sample.
"""

from __future__ import annotations

import importlib
import lzma
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import imagecodecs as _imagecodecs
import numpy as np

from ..errors import DecodeError, TruncatedTileError
from .model import COMPRESSION_NAMES, TileFormat

Buffer = bytes | bytearray | memoryview

# imagecodecs' stubs reject numpy `out=` arrays and memoryviews, which the codecs accept and we rely on
imagecodecs: Any = _imagecodecs

# libtiff runs the predictor only inside these codecs.
_PREDICTED = frozenset({5, 8, 32946, 34925, 50000})
_JPEGXL = frozenset({50002, 52546})
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _available(name: str) -> bool:
    codec = getattr(imagecodecs, name, None)
    return bool(codec is not None and getattr(codec, "available", False))


_HAVE_LIBDEFLATE = _available("DEFLATE")
_isal_zlib: Any
try:  # ISA-L's inflate (python-isal): libdeflate's speed, and it can stop after the rows a window needs
    _isal_zlib = importlib.import_module("isal.isal_zlib")
except ImportError:  # pragma: no cover - a platform without its wheels: zlib and libdeflate only
    _isal_zlib = None
_INFLATE_ERRORS: tuple[type[Exception], ...] = (
    (zlib.error,) if _isal_zlib is None else (zlib.error, _isal_zlib.error))
_HAVE_JPEGXL = _available("JPEGXL")


@dataclass(frozen=True)
class _Layout:
    """Sizes derived from a TileFormat and the rows asked for."""

    rows: int
    row_bytes: int  # stored bytes per tile row
    need: int  # stored bytes the requested rows take
    full: int  # stored bytes of the whole tile
    stored: np.dtype
    native: np.dtype
    bilevel: bool


def supported_compressions() -> frozenset[int]:
    """TIFF Compression codes decode_tile can read with the installed imagecodecs."""
    codes = set(_BYTE_CODECS) | {7, 34887, 50001}
    if _HAVE_JPEGXL:
        codes |= _JPEGXL
    return frozenset(codes)


def decode_tile(data: Buffer, fmt: TileFormat, rows: int | None = None, *, first_row: int = 0,
                cols: int | None = None) -> np.ndarray:
    """Decode one tile or strip to a (rows - first_row, cols, samples) array in native byte order.

    `rows` asks for the leading rows only (1..tile_height); codecs that can stop early do. `first_row`
    and `cols` (default: all) narrow the result to the rows from `first_row` and the leading `cols`
    columns: the byte codecs still inflate every row up to `rows`, but the predictor, which runs along
    each row from its first column, is undone only there. The result may be a read-only view.
    Raises DecodeError for corrupt or short streams and for unsupported formats.
    """
    layout = _layout(fmt, rows)
    width = fmt.tile_width
    c = width if cols is None else cols
    if not (0 <= first_row < layout.rows and 1 <= c <= width):
        raise DecodeError(f"region rows {first_row}..{layout.rows} x cols 0..{c} outside the "
                          f"{width}x{fmt.tile_height} tile")
    comp = fmt.compression
    image_codec = _IMAGE_CODECS.get(comp)
    if image_codec is not None and (comp not in _JPEGXL or _HAVE_JPEGXL):
        if layout.bilevel:
            raise DecodeError(f"1-bit samples cannot be {_codec_name(comp)} compressed")
        return image_codec(data, fmt, layout)[first_row:, :c]
    byte_codec = _BYTE_CODECS.get(comp)
    if byte_codec is None:
        raise DecodeError(f"unsupported compression {_codec_name(comp)}")
    if fmt.photometric == 6:
        raise DecodeError(f"YCbCr photometric is only supported with JPEG compression, not {_codec_name(comp)}")
    predictor = fmt.predictor if comp in _PREDICTED else 1
    _check_predictor(predictor, layout)
    try:
        raw, writable = byte_codec(data, layout.need, layout.full)
    except DecodeError:
        raise
    except Exception as exc:  # codecs raise many types on garbage; all mean "corrupt stream"
        raise DecodeError(f"corrupt {_codec_name(comp)} stream: {exc}") from exc
    if raw.size < layout.need:
        raise TruncatedTileError(
            f"{_codec_name(comp)} stream decodes to {raw.size} bytes; the {layout.rows} rows requested "
            f"need {layout.need} ({layout.row_bytes} per row)"
        )
    return _to_pixels(raw[: layout.need], writable, fmt, layout, predictor, first_row, c)


# A prefix read must hold the compressed rows a window needs; their share of the tile's bytes is near their
# share of its rows on even content but reaches ~2.5x it on tiles whose top is empty (nodata compresses to
# nothing). A prefix that falls short costs one more request for the rest of the tile.
PREFIX_MARGIN = 2.0
PREFIX_SLACK = 32 * 1024
PREFIX_MAX_SHARE = 0.75  # a prefix estimate above this share of the tile: fetch the whole tile


def prefix_length(fmt: TileFormat, rows: int, length: int) -> int:
    """Leading bytes of a stored tile of `length` bytes worth fetching to decode its first `rows` rows:
    exact for uncompressed data, an estimate with headroom for Deflate (decoded from the start, it can
    stop anywhere), the whole tile for other codecs. Decoding a prefix that proves too short raises
    TruncatedTileError."""
    if rows >= fmt.tile_height or length <= PREFIX_SLACK:
        return length
    if fmt.compression == 1:
        try:
            return min(length, _layout(fmt, rows).need)
        except DecodeError:
            return length
    if fmt.compression in (8, 32946):
        estimate = int(length * rows / fmt.tile_height * PREFIX_MARGIN) + PREFIX_SLACK
        return length if estimate >= length * PREFIX_MAX_SHARE else estimate
    return length


def _codec_name(comp: int) -> str:
    name = COMPRESSION_NAMES.get(comp)
    return f"{name} ({comp})" if name else f"code {comp}"


def _layout(fmt: TileFormat, rows: int | None) -> _Layout:
    """Validate the format and work out byte sizes; DecodeError on anything unsupported."""
    try:
        stored = np.dtype(fmt.dtype)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"unknown sample dtype {fmt.dtype!r}") from exc
    width, height, samples = fmt.tile_width, fmt.tile_height, fmt.samples
    if width <= 0 or height <= 0 or samples <= 0:
        raise DecodeError(f"invalid tile geometry {width}x{height}x{samples}")
    r = height if rows is None else rows
    if not 1 <= r <= height:
        raise DecodeError(f"rows={rows} outside 1..{height}")
    if stored.kind == "c":
        raise DecodeError(f"complex sample type {stored.name} is not supported")
    if (stored.kind, stored.itemsize) not in _SAMPLE_TYPES:
        raise DecodeError(f"sample type {stored.str} is not supported")
    bits = fmt.bits_per_sample or stored.itemsize * 8
    bilevel = bits == 1
    if bilevel:
        if stored.kind != "u" or stored.itemsize != 1:
            raise DecodeError(f"1-bit samples must be declared as uint8, got {stored.str}")
        row_bytes = -(-width * samples // 8)
    elif bits == stored.itemsize * 8:
        row_bytes = width * samples * stored.itemsize
    else:
        raise DecodeError(f"{bits}-bit samples are not supported (only 1 and whole-byte sizes)")
    return _Layout(
        rows=r,
        row_bytes=row_bytes,
        need=r * row_bytes,
        full=height * row_bytes,
        stored=stored,
        native=stored.newbyteorder("="),
        bilevel=bilevel,
    )


_SAMPLE_TYPES = frozenset(
    [("u", n) for n in (1, 2, 4, 8)] + [("i", n) for n in (1, 2, 4, 8)] + [("f", n) for n in (2, 4, 8)]
)


def _check_predictor(predictor: int, layout: _Layout) -> None:
    if predictor == 1:
        return
    if predictor == 2:
        if layout.bilevel:
            raise DecodeError("horizontal differencing predictor is not supported with 1-bit samples")
        return
    if predictor == 3:
        if layout.stored.kind != "f":
            raise DecodeError(f"floating-point predictor needs float samples, got {layout.stored.name}")
        return
    raise DecodeError(f"unsupported predictor {predictor}")


def _to_pixels(raw: np.ndarray, writable: bool, fmt: TileFormat, layout: _Layout, predictor: int,
               first_row: int, cols: int) -> np.ndarray:
    """Bytes of the decoded rows -> the pixels of rows first_row.. and columns ..cols: unpack bits, swap
    bytes, undo the predictor (in place when the bytes are ours, else into a new array: no extra copy)."""
    r, w, s = layout.rows, fmt.tile_width, fmt.samples
    if layout.bilevel:
        bits = np.unpackbits(raw.reshape(r, layout.row_bytes)[first_row:], axis=1, count=w * s)
        return bits.reshape(r - first_row, w, s)[:, :cols]
    if predictor == 3:
        # libtiff's floating-point predictor leaves native-order values whatever the file order; it
        # shuffles the bytes of a whole row, so only rows narrow its work (and it cannot work in place)
        src = raw.view(layout.native).reshape(r, w, s)[first_row:]
        out = np.empty_like(src)
        return imagecodecs.floatpred_decode(src, axis=-2, out=out)[:, :cols]
    arr = raw.view(layout.stored).reshape(r, w, s)[first_row:, :cols]
    if not layout.stored.isnative:
        if writable:
            arr = arr.byteswap(inplace=True).view(layout.native)
        else:
            arr = arr.astype(layout.native)
        writable = True
    if predictor != 2:
        return arr
    # integer wrap-around on the unsigned bit patterns (floats too, as libtiff does)
    unsigned = _UNSIGNED[layout.stored.itemsize]
    out = arr if writable else np.empty(arr.shape, layout.native)
    imagecodecs.delta_decode(arr.view(unsigned), axis=-2, out=out.view(unsigned))
    return out


# --- byte codecs: return (uint8 array, writable); at most `full` bytes, at least `need` if the stream has them


def _raw_none(data: Buffer, need: int, full: int) -> tuple[np.ndarray, bool]:
    src = np.frombuffer(data, np.uint8)
    return src[:need], False


def _inflate(data: Buffer, need: int, full: int) -> tuple[np.ndarray, bool]:
    # ISA-L streams as fast as libdeflate inflates whole tiles and stops after the needed rows: every
    # partial read goes to it. Without it, zlib streaming (~2.5x slower per byte than libdeflate) takes
    # short prefixes. libdeflate takes whole tiles; zlib whatever libdeflate refuses (oversize stream to
    # truncate, truncated stream).
    if need < full and _isal_zlib is not None:
        return _inflate_stream(data, need, need, fast=True), False
    if need * 3 <= full or not _HAVE_LIBDEFLATE:
        return _inflate_stream(data, need, need), False
    buf = np.empty(full, np.uint8)
    try:
        out = imagecodecs.deflate_decode(data, out=buf)
    except Exception:
        return _inflate_stream(data, need, full), False
    return buf[: len(out)], True


def _inflate_stream(data: Buffer, need: int, limit: int, fast: bool = False) -> np.ndarray:
    inflater = _isal_zlib.decompressobj() if fast and _isal_zlib is not None else zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
    except _INFLATE_ERRORS as exc:
        raise DecodeError(f"corrupt deflate stream: {exc}") from exc
    return np.frombuffer(out, np.uint8)


def _unzstd(data: Buffer, need: int, full: int) -> tuple[np.ndarray, bool]:
    if need * 2 <= full:
        return _zstd_stream(data, need, need), True
    buf = np.empty(full, np.uint8)
    try:
        out = imagecodecs.zstd_decode(data, out=buf)
    except Exception:
        # too small a buffer (oversize stream, truncated like libtiff does) or a corrupt/cut stream
        return _zstd_stream(data, need, full), True
    return buf[: len(out)], True


_STREAM_CHUNK = 1 << 20


def _zstd_stream(data: Buffer, need: int, limit: int) -> np.ndarray:
    """Streaming ZSTD (via pyarrow) that stops after `limit` bytes; imagecodecs cannot stop early."""
    import pyarrow as pa

    buf = np.empty(limit, np.uint8)
    view = buf.data
    got = 0
    try:
        stream = pa.CompressedInputStream(pa.BufferReader(pa.py_buffer(data)), "zstd")
        while got < limit:
            n = stream.readinto(view[got : min(limit, got + _STREAM_CHUNK)])
            if not n:
                break
            got += n
    except (OSError, pa.ArrowException) as exc:
        if got < need:
            raise DecodeError(f"corrupt zstd stream: {exc}") from exc
    return buf[:got]


def _unlzw(data: Buffer, need: int, full: int) -> tuple[np.ndarray, bool]:
    # imagecodecs' LZW stops when its output buffer is full
    buf = np.empty(need, np.uint8)
    out = imagecodecs.lzw_decode(data, out=buf)
    return buf[: len(out)], True


def _unlzma(data: Buffer, need: int, full: int) -> tuple[np.ndarray, bool]:
    buf = np.empty(need, np.uint8)
    try:
        out = imagecodecs.lzma_decode(data, out=buf)
    except Exception:
        # a cut stream: the stdlib decoder hands back what it could decode
        try:
            part = lzma.LZMADecompressor().decompress(data, need)
        except (lzma.LZMAError, EOFError) as exc:
            raise DecodeError(f"corrupt lzma stream: {exc}") from exc
        return np.frombuffer(part, np.uint8), False
    return buf[: len(out)], True


def _unpackbits(data: Buffer, need: int, full: int) -> tuple[np.ndarray, bool]:
    buf = np.empty(full, np.uint8)
    try:
        out = imagecodecs.packbits_decode(data, out=buf)
    except Exception as exc:
        if "TOO_SMALL" not in str(exc):
            raise
        return buf[: _packbits_bounded(bytes(data), buf)], True
    return buf[: len(out)], True


def _packbits_bounded(src: bytes, out: np.ndarray) -> int:
    """PackBits into `out`, stopping when it is full (the stream holds more than one tile)."""
    limit, i, o, n = out.size, 0, 0, len(src)
    while i < n and o < limit:
        header = src[i]
        i += 1
        if header < 128:
            chunk = src[i : i + header + 1][: limit - o]
            out[o : o + len(chunk)] = np.frombuffer(chunk, np.uint8)
            o += len(chunk)
            i += header + 1
        elif header > 128:
            if i >= n:
                break
            count = min(257 - header, limit - o)
            out[o : o + count] = src[i]
            o += count
            i += 1
    return o


_BYTE_CODECS: dict[int, Callable[[Buffer, int, int], tuple[np.ndarray, bool]]] = {
    1: _raw_none,
    5: _unlzw,
    8: _inflate,
    32946: _inflate,
    32773: _unpackbits,
    34925: _unlzma,
    50000: _unzstd,
}


# --- image codecs: decode whole tiles into a tile-sized buffer, return the leading rows

_SHAPE_IN_MESSAGE = re.compile(r"shape=\(([\d, ]+)\)\s*$")


def _into_tile(
    decode: Callable[[np.ndarray], np.ndarray], name: str, fmt: TileFormat, layout: _Layout, dtype: np.dtype
) -> np.ndarray:
    """Run an image codec into a tile-sized buffer; accept a shorter image (a last strip) if it fits."""
    th, tw, s = fmt.tile_height, fmt.tile_width, fmt.samples
    shape: tuple[int, ...] = (th, tw, s) if s > 1 else (th, tw)
    try:
        try:
            result = decode(np.empty(shape, dtype))
        except ValueError as exc:
            # imagecodecs checks the stream's size against `out` before decoding and names it
            found = _SHAPE_IN_MESSAGE.search(str(exc))
            dims = tuple(int(v) for v in found.group(1).split(",")) if found else ()
            if not dims or dims[0] > th or dims[1:] != shape[1:]:
                raise DecodeError(f"{name} image {dims or '?'} does not fit the {th}x{tw}x{s} tile: {exc}") from exc
            result = decode(np.empty(dims, dtype))
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"corrupt {name} stream: {exc}") from exc
    height = result.shape[0]
    if height < layout.rows:
        raise DecodeError(f"{name} image has {height} rows; {layout.rows} requested")
    return result.reshape(height, tw, s)[: layout.rows]


_JPEG_RAW_SPACE = {1: "GRAYSCALE", 3: "RGB", 4: "CMYK"}


def _jpeg(data: Buffer, fmt: TileFormat, layout: _Layout) -> np.ndarray:
    # libtiff converts only YCbCr to RGB (GDAL asks it to) and passes every other stream through raw,
    # even a 3-component one that libjpeg alone would guess to be YCbCr: same in and out space = no conversion
    colorspace = outcolorspace = _JPEG_RAW_SPACE.get(fmt.samples)
    if fmt.photometric == 6 and fmt.samples == 3:
        colorspace, outcolorspace = "YCbCr", "RGB"
    tables = fmt.jpeg_tables or None

    def run(out: np.ndarray) -> np.ndarray:
        return imagecodecs.jpeg8_decode(
            data, tables=tables, colorspace=colorspace, outcolorspace=outcolorspace, out=out
        )

    return _into_tile(run, "jpeg", fmt, layout, layout.native)


def _webp(data: Buffer, fmt: TileFormat, layout: _Layout) -> np.ndarray:
    if layout.stored != np.uint8 or fmt.samples not in (3, 4):
        raise DecodeError(f"webp tiles must be 3 or 4 uint8 samples, got {fmt.samples} x {layout.stored.name}")
    hasalpha = fmt.samples == 4

    def run(out: np.ndarray) -> np.ndarray:
        return imagecodecs.webp_decode(data, hasalpha=hasalpha, out=out)

    return _into_tile(run, "webp", fmt, layout, layout.native)


def _jpegxl(data: Buffer, fmt: TileFormat, layout: _Layout) -> np.ndarray:
    def run(out: np.ndarray) -> np.ndarray:
        return imagecodecs.jpegxl_decode(data, out=out)

    return _into_tile(run, "jpegxl", fmt, layout, layout.native)


# LERC data types, as libtiff maps them from SampleFormat/BitsPerSample
_LERC_TYPES = {("i", 1): 0, ("u", 1): 1, ("i", 2): 2, ("u", 2): 3, ("i", 4): 4, ("u", 4): 5, ("f", 4): 6, ("f", 8): 7}
_LERC_KEY = b"Lerc2 "


@dataclass(frozen=True)
class _LercBlob:
    rows: int
    cols: int
    depth: int  # values per pixel (nDim)
    bands: int  # consecutive blobs
    data_type: int
    masked: bool  # some band has invalid pixels


def _lerc_info(blob: bytes) -> _LercBlob:
    """Read the Lerc2 headers of every band blob (no decoding) to check sizes before allocating."""
    pos, bands, masked = 0, 0, False
    first: tuple[int, ...] = ()
    while pos + 10 <= len(blob) and blob[pos : pos + 6] == _LERC_KEY:
        version = int.from_bytes(blob[pos + 6 : pos + 10], "little", signed=True)
        if not 1 <= version <= 6:
            raise DecodeError(f"unsupported Lerc2 version {version}")
        at = pos + 10 + (4 if version >= 3 else 0)
        count = 7 if version >= 4 else 6
        ints = np.frombuffer(blob[at : at + 4 * count], "<i4")
        if ints.size < count:
            raise DecodeError("truncated LERC header")
        values = [int(v) for v in ints]
        rows, cols = values[0], values[1]
        depth = values[2] if version >= 4 else 1
        valid, blob_size, data_type = values[-4], values[-2], values[-1]
        if rows <= 0 or cols <= 0 or depth <= 0 or blob_size <= 0 or not 0 <= valid <= rows * cols:
            raise DecodeError("corrupt LERC header")
        header = (rows, cols, depth, data_type)
        if first and header != first:
            raise DecodeError("LERC bands differ in size or type")
        first = header
        masked = masked or valid < rows * cols
        bands += 1
        pos += blob_size
    if not bands:
        raise DecodeError("not a Lerc2 blob")
    if pos > len(blob):
        raise DecodeError(f"truncated LERC blob: {len(blob)} bytes, headers declare {pos}")
    return _LercBlob(first[0], first[1], first[2], bands, first[3], masked)


def _lerc(data: Buffer, fmt: TileFormat, layout: _Layout) -> np.ndarray:
    params = fmt.lerc_parameters or (4, 0)
    extra = params[1] if len(params) > 1 else 0
    # libtiff's scratch buffer for the inner LERC blob: the tile plus a third, plus slack
    bound = 256 + layout.full + layout.full // 3 + 65536
    try:
        if extra == 0:
            blob = bytes(data)
        elif extra == 1:
            inflater = zlib.decompressobj()
            blob = inflater.decompress(data, bound)
            if inflater.unconsumed_tail:
                raise DecodeError(f"LERC deflate layer inflates to more than {bound} bytes")
        elif extra == 2:
            part = _zstd_stream(data, bound + 1, bound + 1)
            if part.size > bound:
                raise DecodeError(f"LERC zstd layer decodes to more than {bound} bytes")
            blob = part.tobytes()
        else:
            raise DecodeError(f"unsupported LERC additional compression {extra}")
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"corrupt LERC compression layer: {exc}") from exc
    info = _lerc_info(blob)
    return _lerc_pixels(blob, info, fmt, layout)


def _lerc_pixels(blob: bytes, info: _LercBlob, fmt: TileFormat, layout: _Layout) -> np.ndarray:
    kind, size = layout.stored.kind, layout.stored.itemsize
    expected_type = _LERC_TYPES.get((kind, size))
    if expected_type is None:
        raise DecodeError(f"LERC does not store {layout.stored.name}")
    if info.data_type != expected_type:
        raise DecodeError(f"LERC data type {info.data_type}, expected {expected_type} for {layout.stored.name}")
    th, tw, s = fmt.tile_height, fmt.tile_width, fmt.samples
    if info.cols != tw or info.rows > th:
        raise DecodeError(f"LERC image is {info.cols}x{info.rows}, tile is {tw}x{th}")
    if info.rows < layout.rows:
        raise DecodeError(f"LERC image has {info.rows} rows; {layout.rows} requested")
    alpha_mask = kind == "u" and size == 1 and s > 1 and info.depth == s - 1 and info.bands == 1
    band_sequential = kind == "f" and s > 1 and info.depth == 1 and info.bands == s
    if not (alpha_mask or band_sequential or (info.depth == s and info.bands == 1)):
        raise DecodeError(f"LERC blob has {info.bands} band(s) of depth {info.depth}; the tile has {s} samples")
    try:
        values, masks = imagecodecs.lerc_decode(blob, masks=True)
    except Exception as exc:
        raise DecodeError(f"corrupt LERC stream: {exc}") from exc
    h = info.rows
    values = np.asarray(values)
    if band_sequential:
        pixels = np.ascontiguousarray(np.moveaxis(values.reshape(s, h, tw), 0, -1))
    else:
        pixels = np.empty((h, tw, s), layout.native)
        pixels[..., : info.depth] = values.reshape(h, tw, info.depth)
    if alpha_mask:
        pixels[..., -1] = 255 if masks is None else np.asarray(masks).reshape(h, tw) * np.uint8(255)
    elif kind == "f" and masks is not None and info.masked:
        invalid = ~np.asarray(masks, dtype=bool)
        if invalid.ndim == 3:  # one mask per band
            invalid = np.moveaxis(invalid.reshape(-1, h, tw), 0, -1)
        else:
            invalid = invalid.reshape(h, tw, 1)
        np.copyto(pixels, np.nan, where=np.broadcast_to(invalid, pixels.shape))
    return pixels[: layout.rows]


_IMAGE_CODECS: dict[int, Callable[[Buffer, TileFormat, _Layout], np.ndarray]] = {
    7: _jpeg,
    34887: _lerc,
    50001: _webp,
    50002: _jpegxl,
    52546: _jpegxl,
}
