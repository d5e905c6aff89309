"""TIFF structure from bytes: header, IFD chains, tag values. Pure: callers supply the bytes.

Reading is split so that I/O can be planned: `parse_tiff_header` reads the 8/16 byte file header,
`parse_ifd_entries` reads one directory block and says which tag values live elsewhere in the file,
`decode_value` turns a tag's raw bytes into Python values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..errors import TiffFormatError
from .tags import FIELD_TYPES

MAX_IFDS = 512  # directories in one chain; a longer chain is garbage or hostile
MAX_ENTRIES = 4096  # entries in one directory
MAX_VALUE_BYTES = 256 * 1024 * 1024  # one tag's payload; 32M tiles' offsets as LONG8


@dataclass(frozen=True)
class FileHeader:
    byte_order: str  # "<" or ">"
    bigtiff: bool
    first_ifd: int

    @property
    def entry_size(self) -> int:
        return 20 if self.bigtiff else 12

    @property
    def count_size(self) -> int:
        return 8 if self.bigtiff else 2

    @property
    def offset_size(self) -> int:
        return 8 if self.bigtiff else 4

    def ifd_block_size(self, n_entries: int) -> int:
        """Bytes of a directory with n entries: count, entries, next-IFD offset."""
        return self.count_size + n_entries * self.entry_size + self.offset_size


@dataclass(frozen=True)
class Entry:
    """One directory entry; `inline` holds the value bytes when they fit in the entry."""

    tag: int
    type: int
    count: int
    value_offset: int  # file offset of the value when not inline
    inline: bytes | None

    def nbytes(self) -> int:
        return self.count * FIELD_TYPES[self.type][1]


def parse_tiff_header(data: bytes) -> FileHeader:
    """Read byte order, classic/BigTIFF and the first IFD offset from the first bytes of a file."""
    if len(data) < 8:
        raise TiffFormatError(f"file too short for a TIFF header ({len(data)} bytes)")
    mark = data[:2]
    if mark == b"II":
        bo = "<"
    elif mark == b"MM":
        bo = ">"
    else:
        raise TiffFormatError(f"not a TIFF file (starts with {data[:4]!r})")
    (version,) = struct.unpack(bo + "H", data[2:4])
    if version == 42:
        (first,) = struct.unpack(bo + "I", data[4:8])
        return FileHeader(bo, False, first)
    if version == 43:
        if len(data) < 16:
            raise TiffFormatError("file too short for a BigTIFF header")
        offsize, _reserved, first = struct.unpack(bo + "HHQ", data[4:16])
        if offsize != 8:
            raise TiffFormatError(f"BigTIFF with offset size {offsize}, expected 8")
        return FileHeader(bo, True, first)
    raise TiffFormatError(f"unknown TIFF version {version} (42 classic, 43 BigTIFF)")


def entry_count(head: FileHeader, data: bytes) -> int:
    """The number of entries of a directory, from the directory's first bytes."""
    fmt = head.byte_order + ("Q" if head.bigtiff else "H")
    (n,) = struct.unpack(fmt, data[: head.count_size])
    if n == 0 or n > MAX_ENTRIES:
        raise TiffFormatError(f"implausible IFD entry count {n}")
    return int(n)


def parse_ifd_entries(head: FileHeader, block: bytes, n: int) -> tuple[list[Entry], int]:
    """Parse a directory block (count + entries + next offset) into entries and the next IFD offset."""
    bo = head.byte_order
    es = head.entry_size
    inline_size = head.offset_size
    entries: list[Entry] = []
    pos = head.count_size
    efmt = bo + ("HHQ" if head.bigtiff else "HHI")
    ofmt = bo + ("Q" if head.bigtiff else "I")
    for _ in range(n):
        tag, typ, count = struct.unpack(efmt, block[pos : pos + es - inline_size])
        raw = block[pos + es - inline_size : pos + es]
        pos += es
        if typ not in FIELD_TYPES:
            continue  # unknown types are legal (readers skip them); never guess their size
        size = count * FIELD_TYPES[typ][1]
        if size > MAX_VALUE_BYTES:
            raise TiffFormatError(f"tag {tag} claims {count} values ({size} bytes)")
        if size <= inline_size:
            entries.append(Entry(tag, typ, count, -1, raw[:size]))
        else:
            (voff,) = struct.unpack(ofmt, raw)
            entries.append(Entry(tag, typ, count, int(voff), None))
    (next_ifd,) = struct.unpack(ofmt, block[pos : pos + inline_size])
    return entries, int(next_ifd)


def decode_value(entry: Entry, raw: bytes, byte_order: str) -> object:
    """Turn a tag's value bytes into Python: str for ASCII, bytes for UNDEFINED, tuple or ndarray."""
    code, size = FIELD_TYPES[entry.type]
    need = entry.count * size
    if len(raw) < need:
        raise TiffFormatError(f"tag {entry.tag} value truncated ({len(raw)} of {need} bytes)")
    raw = raw[:need]
    if entry.type == 2:  # ASCII: NUL-terminated, possibly several strings
        return raw.split(b"\x00")[0].decode("latin-1") if b"\x00" in raw else raw.decode("latin-1")
    if entry.type == 7:
        return bytes(raw)
    if entry.type in (5, 10):
        arr = np.frombuffer(raw, dtype=byte_order + ("u4" if entry.type == 5 else "i4")).reshape(-1, 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            return tuple(float(n) / float(d) if d else float("nan") for n, d in arr)
    dt = np.dtype(byte_order + code)
    return np.frombuffer(raw, dtype=dt)


def as_ints(value: object) -> tuple[int, ...]:
    """A numeric tag value as a tuple of Python ints."""
    if isinstance(value, np.ndarray):
        return tuple(int(v) for v in value.tolist())
    if isinstance(value, tuple):
        return tuple(int(v) for v in value)
    if isinstance(value, bytes):
        return tuple(value)
    raise TiffFormatError(f"expected a numeric tag value, got {type(value).__name__}")


def as_floats(value: object) -> tuple[float, ...]:
    """A numeric tag value as a tuple of Python floats."""
    if isinstance(value, np.ndarray):
        return tuple(float(v) for v in value.tolist())
    if isinstance(value, tuple):
        return tuple(float(v) for v in value)
    raise TiffFormatError(f"expected a numeric tag value, got {type(value).__name__}")
