"""Range coalescing: merge nearby byte ranges of one file into fewer, larger requests.

Pure functions, no I/O. A remote request costs a round trip, so fetching a small gap between two tiles is
cheaper than a second request; ``max_gap`` says how many wasted bytes are worth one round trip and
``max_size`` keeps merged requests small enough to run in parallel and to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Tuned by benchmarks/coalesce_sweep.py (results/coalesce-sweep.md): a gap above GDAL's 4-byte tile leader
# and below one tile merges neighbouring tiles without fetching unneeded ones; 8-64 MiB per request are
# equally fast on the benchmark, 16 MiB keeps requests few.
DEFAULT_MAX_GAP = 64 * 1024
DEFAULT_MAX_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MergedRange:
    """One request covering several input ranges.

    ``parts`` holds ``(input_index, offset)`` pairs: input ``i`` of length ``n`` is
    ``merged_bytes[offset:offset + n]``.
    """

    start: int
    length: int
    parts: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        """One past the last byte (exclusive end)."""
        return self.start + self.length


def coalesce(
    ranges: Sequence[tuple[int, int]],
    max_gap: int = DEFAULT_MAX_GAP,
    max_size: int = DEFAULT_MAX_SIZE,
) -> list[MergedRange]:
    """Merge ``(start, length)`` ranges whose gap is at most ``max_gap`` while the merge stays <= ``max_size``.

    Duplicates and overlaps are allowed and share bytes. A single range longer than ``max_size`` keeps its
    own request (ranges inside it join it). Zero-length ranges need no bytes and appear in no merged range. Output is sorted by start.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    if max_size <= 0:
        raise ValueError(f"max_size must be > 0, got {max_size}")
    for start, length in ranges:
        if start < 0 or length < 0:
            raise ValueError(f"invalid range (start={start}, length={length})")
    order = sorted((i for i, (_, n) in enumerate(ranges) if n > 0), key=lambda i: (ranges[i][0], -ranges[i][1]))
    merged: list[MergedRange] = []
    group: list[int] = []
    g_start = g_end = 0
    for i in order:
        start, length = ranges[i]
        end = start + length
        inside = end <= g_end  # already fetched by the group: free to add whatever its size
        if group and (inside or (start - g_end <= max_gap and end - g_start <= max_size)):
            group.append(i)
            g_end = max(g_end, end)
            continue
        if group:
            merged.append(_close(ranges, group, g_start, g_end))
        group, g_start, g_end = [i], start, end
    if group:
        merged.append(_close(ranges, group, g_start, g_end))
    return merged


def _close(ranges: Sequence[tuple[int, int]], group: list[int], g_start: int, g_end: int) -> MergedRange:
    """Freeze one group into a MergedRange with each member's offset."""
    return MergedRange(g_start, g_end - g_start, tuple((i, ranges[i][0] - g_start) for i in group))


def split(merged: Sequence[MergedRange], buffers: Sequence[bytes], ranges: Sequence[tuple[int, int]]
          ) -> list[bytes | memoryview]:
    """Cut each input range out of the fetched merged buffers, in input order, without copying: a buffer
    that is exactly one input range is returned as it is, a part of a larger one as a memoryview of it
    (copying megabyte tiles on the event loop cost more than decoding some of them)."""
    out: list[bytes | memoryview] = [b""] * len(ranges)
    for m, buf in zip(merged, buffers, strict=True):
        if len(buf) != m.length:
            raise ValueError(f"merged range at {m.start} has {len(buf)} bytes, expected {m.length}")
        view = memoryview(buf)
        for i, off in m.parts:
            n = ranges[i][1]
            out[i] = buf if off == 0 and n == m.length else view[off:off + n]
    return out
