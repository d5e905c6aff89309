"""Parse a whole TIFF/GeoTIFF header through byte-range reads, in as few requests as possible.

One speculative read of the file's first bytes holds a GDAL COG's entire header (all directories and
their tile tables sit in front of the pixel data), so a COG costs exactly one request. Anything beyond
it is fetched in batches: all directory blocks of the chain first, then every out-of-line tag value of
every directory in one batch, so a plain GeoTIFF with its directory at the end takes three or four.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

import numpy as np

from ..errors import RasterduckError, TiffFormatError
from . import tags as T
from .geo import georeference
from .ifd import (
    MAX_IFDS,
    Entry,
    FileHeader,
    as_ints,
    decode_value,
    entry_count,
    parse_ifd_entries,
    parse_tiff_header,
)
from .model import ImageIFD, TiffHeader


class FetchRanges(Protocol):
    """Fetch (start, length) ranges of one file. With allow_short=True (speculative reads) an answer may
    be shorter than asked where the file ends; otherwise every answer is exact."""

    def __call__(self, ranges: Sequence[tuple[int, int]], allow_short: bool = False) -> Awaitable[list[bytes]]: ...

FIRST_READ = 16 * 1024  # one request for GDAL COG headers of up to ~1500 tiles over all levels (tuned: S4)
IFD_READ = 16 * 1024  # speculative size of a directory read beyond the first block


class _Bytes:
    """The parts of a file fetched so far; slices are answered without I/O when covered."""

    def __init__(self, fetch: FetchRanges) -> None:
        self._fetch = fetch
        self._pieces: list[tuple[int, bytes]] = []
        self.requests = 0
        self.nbytes = 0
        self.eof: int | None = None

    def get(self, start: int, length: int) -> bytes | None:
        for pstart, data in self._pieces:
            if pstart <= start and start + length <= pstart + len(data):
                return data[start - pstart : start - pstart + length]
        if self.eof is not None and start + length > self.eof:
            raise TiffFormatError(f"file truncated: needs bytes {start}..{start + length}, ends at {self.eof}")
        return None

    async def load(self, ranges: Sequence[tuple[int, int]], speculative: bool = False) -> None:
        todo = [(s, n) for s, n in ranges if self.get(s, n) is None]
        if not todo:
            return
        answers = await self._fetch(todo, allow_short=speculative)
        self.requests += len(todo)
        for (s, n), data in zip(todo, answers, strict=True):
            self.nbytes += len(data)
            if len(data) < n:
                end = s + len(data)
                self.eof = end if self.eof is None else min(self.eof, end)
            self._pieces.append((s, bytes(data)))

    async def need(self, start: int, length: int) -> bytes:
        got = self.get(start, length)
        if got is None:
            await self.load([(start, length)])
            got = self.get(start, length)
            if got is None:
                raise TiffFormatError(f"file truncated at byte {start + length}")
        return got


async def read_header(url: str, fetch: FetchRanges, *, first_read: int = FIRST_READ) -> TiffHeader:
    """Read and parse the header of the TIFF at `url`; errors name the URL."""
    try:
        return await _read_header(url, fetch, first_read)
    except RasterduckError as exc:
        raise exc.with_context(url=url) from None
    except (ValueError, IndexError, KeyError, OverflowError) as exc:  # struct/numpy on garbage
        raise TiffFormatError(f"malformed TIFF header: {exc}", url=url) from exc


async def _read_header(url: str, fetch: FetchRanges, first_read: int) -> TiffHeader:
    buf = _Bytes(fetch)
    await buf.load([(0, first_read)], speculative=True)
    first = buf.get(0, 16) or buf.get(0, 8)
    if first is None:
        raise TiffFormatError("file too short for a TIFF header")
    head = parse_tiff_header(first)

    # 1. Walk the directory chain, fetching directory blocks that are not in hand.
    chains: list[list[Entry]] = []
    seen: set[int] = set()
    offset = head.first_ifd
    while offset:
        if offset in seen:
            raise TiffFormatError(f"IFD chain loops back to offset {offset}")
        if len(seen) >= MAX_IFDS:
            raise TiffFormatError(f"more than {MAX_IFDS} IFDs")
        seen.add(offset)
        count_bytes = buf.get(offset, head.count_size)
        if count_bytes is None:
            await buf.load([(offset, IFD_READ)], speculative=True)
            count_bytes = await buf.need(offset, head.count_size)
        n = entry_count(head, count_bytes)
        block = await buf.need(offset, head.ifd_block_size(n))
        entries, offset = parse_ifd_entries(head, block, n)
        chains.append(entries)

    # 2. Fetch every wanted out-of-line value of every directory in one batch.
    missing: list[tuple[int, int]] = []
    for i, entries in enumerate(chains):
        for e in entries:
            if _wanted(e, i) and e.inline is None and buf.get(e.value_offset, e.nbytes()) is None:
                missing.append((e.value_offset, e.nbytes()))
    if missing:
        await buf.load(_merge(missing))

    images: list[ImageIFD] = []
    ifd0_tags: dict[int, object] = {}
    for i, entries in enumerate(chains):
        tags: dict[int, object] = {}
        for e in entries:
            if not _wanted(e, i):
                continue
            raw = e.inline if e.inline is not None else await buf.need(e.value_offset, e.nbytes())
            tags[e.tag] = decode_value(e, raw, head.byte_order)
        if i == 0:
            ifd0_tags = tags
        image = image_from_tags(i, tags, head)
        if image is not None:
            images.append(image)
    if not images or images[0].index != 0:
        raise TiffFormatError("first IFD is not an image (no width, height or data offsets)")
    main = images[0]
    overviews = tuple(
        im for im in images[1:] if im.is_overview and im.samples_per_pixel == main.samples_per_pixel
    )
    masks = tuple(im for im in images[1:] if im.is_mask)
    geo = georeference(ifd0_tags, main.samples_per_pixel)
    return TiffHeader(
        url=url,
        byte_order=head.byte_order,
        bigtiff=head.bigtiff,
        image=main,
        overviews=overviews,
        masks=masks,
        geo=geo,
        requests=buf.requests,
        bytes_read=buf.nbytes,
    )


def _wanted(entry: Entry, ifd_index: int) -> bool:
    if entry.tag not in T.WANTED:
        return False
    return ifd_index == 0 or entry.tag not in T.GEO_TAGS


def _merge(ranges: list[tuple[int, int]], gap: int = 4096) -> list[tuple[int, int]]:
    """Merge value ranges that lie close together, so the batch costs few requests."""
    out: list[list[int]] = []
    for s, n in sorted(ranges):
        if out and s <= out[-1][0] + out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], s + n - out[-1][0])
        else:
            out.append([s, n])
    return [(s, n) for s, n in out]


_DTYPES = {
    (1, 8): "uint8", (1, 16): "uint16", (1, 32): "uint32", (1, 64): "uint64",
    (2, 8): "int8", (2, 16): "int16", (2, 32): "int32", (2, 64): "int64",
    (3, 16): "float16", (3, 32): "float32", (3, 64): "float64",
    (1, 1): "uint8",  # bilevel, unpacked to 0/1 like GDAL
}


def sample_dtype(sample_format: int, bits: int) -> str | None:
    """The numpy dtype name of one sample, or None when rasterduck has no array dtype for it."""
    return _DTYPES.get((1 if sample_format == 4 else sample_format, bits))


def _first(tags: dict[int, object], tag: int, default: int) -> int:
    value = tags.get(tag)
    if value is None:
        return default
    ints = as_ints(value)
    return ints[0] if ints else default


def image_from_tags(index: int, tags: dict[int, object], head: FileHeader) -> ImageIFD | None:
    """Build an ImageIFD from a directory's decoded tags; None for directories that hold no image."""
    if T.IMAGE_WIDTH not in tags or T.IMAGE_LENGTH not in tags:
        return None
    width = _first(tags, T.IMAGE_WIDTH, 0)
    height = _first(tags, T.IMAGE_LENGTH, 0)
    if width <= 0 or height <= 0 or width > 2**31 - 1 or height > 2**31 - 1:
        raise TiffFormatError(f"IFD {index}: implausible image size {width}x{height}")
    spp = _first(tags, T.SAMPLES_PER_PIXEL, 1)
    if not 1 <= spp <= 65535:
        raise TiffFormatError(f"IFD {index}: implausible SamplesPerPixel {spp}")
    bps = as_ints(tags[T.BITS_PER_SAMPLE]) if T.BITS_PER_SAMPLE in tags else (1,)
    fmt_values = as_ints(tags[T.SAMPLE_FORMAT]) if T.SAMPLE_FORMAT in tags else (1,)
    sample_format = fmt_values[0] if fmt_values else 1
    planar = _first(tags, T.PLANAR_CONFIGURATION, 1)
    if planar not in (1, 2):
        raise TiffFormatError(f"IFD {index}: PlanarConfiguration {planar} is not 1 or 2")
    if spp == 1:
        planar = 1
    tiled = T.TILE_OFFSETS in tags
    if tiled:
        tw = _first(tags, T.TILE_WIDTH, 0)
        th = _first(tags, T.TILE_LENGTH, 0)
        if tw <= 0 or th <= 0:
            raise TiffFormatError(f"IFD {index}: tiled image without tile size")
        offsets_tag, counts_tag = T.TILE_OFFSETS, T.TILE_BYTE_COUNTS
    elif T.STRIP_OFFSETS in tags:
        tw = width
        th = min(_first(tags, T.ROWS_PER_STRIP, height), height) or height
        offsets_tag, counts_tag = T.STRIP_OFFSETS, T.STRIP_BYTE_COUNTS
    else:
        return None
    if tw * th > 2**31:
        raise TiffFormatError(f"IFD {index}: implausible tile size {tw}x{th}")
    offsets = np.asarray(tags[offsets_tag], dtype=np.int64)
    if counts_tag not in tags:
        raise TiffFormatError(f"IFD {index}: data offsets without byte counts")
    counts = np.asarray(tags[counts_tag], dtype=np.int64)
    per_plane = -(-width // tw) * -(-height // th)
    expected = per_plane * (spp if planar == 2 else 1)
    if len(offsets) < expected or len(counts) < expected:
        raise TiffFormatError(
            f"IFD {index}: {len(offsets)} offsets / {len(counts)} byte counts for {expected} blocks"
        )
    offsets, counts = offsets[:expected].copy(), counts[:expected].copy()
    if (offsets < 0).any() or (counts < 0).any():
        raise TiffFormatError(f"IFD {index}: negative data offset or byte count")
    bits = bps[0] if bps else 1
    if any(b != bits for b in bps):
        dtype = None  # mixed sample sizes: not an array
    else:
        dtype = sample_dtype(sample_format, bits)
    extra = as_ints(tags[T.EXTRA_SAMPLES]) if T.EXTRA_SAMPLES in tags else ()
    jpeg_tables = tags.get(T.JPEG_TABLES)
    lerc = as_ints(tags[T.LERC_PARAMETERS]) if T.LERC_PARAMETERS in tags else None
    ycc = as_ints(tags[T.YCBCR_SUBSAMPLING]) if T.YCBCR_SUBSAMPLING in tags else None
    return ImageIFD(
        index=index,
        width=width,
        height=height,
        tile_width=tw,
        tile_height=th,
        tiled=tiled,
        bits_per_sample=bps,
        sample_format=sample_format,
        samples_per_pixel=spp,
        planar_configuration=planar,
        compression=_first(tags, T.COMPRESSION, 1),
        predictor=_first(tags, T.PREDICTOR, 1),
        photometric=_first(tags, T.PHOTOMETRIC, 1),
        extra_samples=extra,
        subfile_type=_first(tags, T.NEW_SUBFILE_TYPE, 0),
        offsets=offsets,
        byte_counts=counts,
        byte_order=head.byte_order,
        dtype=dtype,
        jpeg_tables=jpeg_tables if isinstance(jpeg_tables, bytes) else None,
        lerc_parameters=lerc,
        ycbcr_subsampling=ycc,
        has_colormap=T.COLORMAP in tags,
    )
