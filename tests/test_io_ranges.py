"""Range coalescing: table cases and a property check against slicing the source bytes directly."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rasterduck.io.ranges import DEFAULT_MAX_GAP, DEFAULT_MAX_SIZE, MergedRange, coalesce, split

KiB = 1024


def spans(merged: list[MergedRange]) -> list[tuple[int, int]]:
    return [(m.start, m.length) for m in merged]


@pytest.mark.parametrize(
    ("ranges", "max_gap", "max_size", "expected"),
    [
        ([], 10, 100, []),
        ([(0, 10)], 10, 100, [(0, 10)]),
        # adjacent ranges merge even with max_gap=0
        ([(0, 10), (10, 10)], 0, 100, [(0, 20)]),
        # a one-byte gap with max_gap=0 does not merge
        ([(0, 10), (11, 10)], 0, 100, [(0, 10), (11, 10)]),
        # gap exactly max_gap merges; one more does not
        ([(0, 10), (20, 5)], 10, 100, [(0, 25)]),
        ([(0, 10), (21, 5)], 10, 100, [(0, 10), (21, 5)]),
        # input order does not matter
        ([(500, 10), (0, 10), (505, 20)], 10, 1000, [(0, 10), (500, 25)]),
        # duplicates share bytes
        ([(100, 50), (100, 50), (100, 50)], 0, 1000, [(100, 50)]),
        # overlap and containment
        ([(0, 100), (10, 5), (90, 20)], 0, 1000, [(0, 110)]),
        # max_size splits a run of adjacent ranges
        ([(0, 40), (40, 40), (80, 40)], 0, 100, [(0, 80), (80, 40)]),
        # a range longer than max_size stays whole and alone, except for ranges inside it
        ([(0, 10), (10, 500), (510, 10), (20, 30)], 0, 100, [(0, 10), (10, 500), (510, 10)]),
        # zero-length ranges need no bytes
        ([(5, 0), (100, 10)], 0, 100, [(100, 10)]),
        # the 88-byte-gap case: [100, 612) and [700, 1212) with a 100-byte gap threshold
        ([(100, 512), (700, 512)], 100, 10_000, [(100, 1112)]),
    ],
)
def test_coalesce_table(ranges: list[tuple[int, int]], max_gap: int, max_size: int,
                        expected: list[tuple[int, int]]) -> None:
    assert spans(coalesce(ranges, max_gap, max_size)) == expected


def test_parts_offsets_and_indices() -> None:
    ranges = [(1000, 10), (0, 4), (1005, 10), (2, 2), (1000, 10)]
    merged = coalesce(ranges, max_gap=0, max_size=1 << 20)
    assert spans(merged) == [(0, 4), (1000, 15)]
    assert sorted(merged[0].parts) == [(1, 0), (3, 2)]
    assert sorted(merged[1].parts) == [(0, 0), (2, 5), (4, 0)]
    assert merged[1].end == 1015


def test_defaults() -> None:
    assert DEFAULT_MAX_GAP == 64 * KiB
    assert DEFAULT_MAX_SIZE == 16 * KiB * KiB
    # two tiles 64 KiB apart merge with the defaults, 64 KiB + 1 apart do not
    assert len(coalesce([(0, 100), (100 + 64 * KiB, 100)])) == 1
    assert len(coalesce([(0, 100), (101 + 64 * KiB, 100)])) == 2


@pytest.mark.parametrize("bad", [[(-1, 5)], [(0, -1)]])
def test_rejects_negative(bad: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        coalesce(bad)


def test_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        coalesce([(0, 1)], max_gap=-1)
    with pytest.raises(ValueError):
        coalesce([(0, 1)], max_size=0)


def test_split_checks_buffer_length() -> None:
    merged = coalesce([(0, 10)])
    with pytest.raises(ValueError):
        split(merged, [b"short"], [(0, 10)])


SOURCE = os.urandom(4096)


@settings(max_examples=300, deadline=None)
@given(
    ranges=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 96)), max_size=40),
    max_gap=st.integers(0, 300),
    max_size=st.integers(1, 1500),
)
def test_coalesce_properties(ranges: list[tuple[int, int]], max_gap: int, max_size: int) -> None:
    merged = coalesce(ranges, max_gap, max_size)
    # every non-empty input is covered exactly once, and its bytes come out of the merged buffer
    covered = sorted(i for m in merged for i, _ in m.parts)
    assert covered == [i for i, (_, n) in enumerate(ranges) if n > 0]
    buffers = [SOURCE[m.start:m.end] for m in merged]
    out = split(merged, buffers, ranges)
    assert out == [SOURCE[s:s + n] for s, n in ranges]
    # merged ranges are sorted, disjoint, tight and within max_size unless a single input is larger
    for m in merged:
        assert m.start == min(ranges[i][0] for i, _ in m.parts)
        assert m.end == max(sum(ranges[i]) for i, _ in m.parts)
        assert m.length <= max_size or (m.start, m.length) in ranges
    for a, b in itertools.pairwise(merged):
        assert a.start < b.start
        # they were kept apart for a reason: the gap is too wide, or merging would be too big
        # (only the size limit can leave two requests overlapping)
        first_of_b = min(ranges[i][0] for i, _ in b.parts)
        assert first_of_b - a.end > max_gap or max(b.end, a.end) - a.start > max_size
