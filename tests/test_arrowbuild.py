"""The NumPy-buffer Arrow builders (core/arrowbuild.py) equal what `pa.array` makes of the same values."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rasterduck.core import arrowbuild as ab


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                                   "float16", "float32", "float64", ">u2", ">f4"])
def test_numeric_equals_pa_array(dtype: str) -> None:
    rng = np.random.default_rng(1)
    values = (rng.random(257) * 100).astype(dtype)
    null = rng.random(257) < 0.2
    got = ab.numeric(values, null=null)
    want = pa.array(values.astype(np.dtype(dtype).newbyteorder("=")), mask=null)
    assert got.equals(want)
    assert ab.numeric(values).equals(pa.array(values.astype(np.dtype(dtype).newbyteorder("="))))


def test_booleans_strings_lists_scattered() -> None:
    rng = np.random.default_rng(2)
    bits = rng.random(1001) < 0.5
    null = rng.random(1001) < 0.1
    assert ab.booleans(bits).equals(pa.array(bits))
    assert ab.booleans(bits, null).equals(pa.array(bits, mask=null))
    words = [None, "", "EPSG:32632", "uint16", "wörd", None, "x" * 300]
    assert ab.strings(words).equals(pa.array(words, pa.string()))
    sizes = np.array([3, 0, 2, 0, 5])
    row_null = np.array([False, True, False, False, False])
    vals = np.arange(10, dtype=np.uint16)
    want = pa.array([[0, 1, 2], None, [3, 4], [], [5, 6, 7, 8, 9]], pa.list_(pa.uint16()))
    assert ab.lists(sizes, ab.numeric(vals), row_null).equals(want)
    where = np.array([True, False, True, True, False])
    assert ab.scattered([7, 8, 9], where, pa.int32()).equals(pa.array([7, None, 8, 9, None], pa.int32()))
    assert ab.scattered([1.5, 2.5, 3.5], where, pa.float64()).equals(
        pa.array([1.5, None, 2.5, 3.5, None], pa.float64()))
    # a raster without a CRS: NULL, not the text "None"
    assert ab.scattered(["EPSG:4326", None, "x"], where, pa.string()).equals(
        pa.array(["EPSG:4326", None, None, "x", None], pa.string()))


def test_binaries_cut_one_buffer() -> None:
    data = np.frombuffer(b"abcdefgh", dtype=np.uint8)
    sizes = np.array([3, 0, 0, 5])
    null = np.array([False, False, True, False])
    assert ab.binaries(sizes, data, null).equals(pa.array([b"abc", b"", None, b"defgh"], pa.binary()))


def test_validity_and_float_values_read_the_buffers() -> None:
    arr = pa.array([1, None, 3, 4, None, 6], pa.int32())
    for a in (arr, arr.slice(1, 4), pa.array([1.5, 2.5])):
        want = [None if v is None else float(v) for v in a.to_pylist()]
        got = ab.float_values(a)
        assert [None if np.isnan(v) else v for v in got.tolist()] == want
        assert ab.validity(a).tolist() == [v is not None for v in a.to_pylist()]
    st = pa.array([{"x": 1.0}, None, {"x": 3.0}], pa.struct([("x", pa.float64())]))
    assert ab.validity(st).tolist() == [True, False, True] and ab.validity(st.slice(1)).tolist() == [False, True]


def test_offsets_switch_to_large_lists() -> None:
    sizes = np.array([2**30, 2**30, 5], dtype=np.int64)
    off = ab.offsets(sizes)
    assert off.type == pa.int64() and off.to_pylist() == [0, 2**30, 2**31, 2**31 + 5]
    assert ab.offsets(np.array([1, 2])).type == pa.int32()
