"""Fuzz the header parser: mutated real headers and random bytes give a header or our own clear error."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rasterduck.errors import RasterduckError
from rasterduck.tiff.header import read_header

from ._paths import corpus_dir

SEEDS = [
    (corpus_dir() / rel).read_bytes()[:40000]
    for rel in ("rio-tiler/cog.tif", "gdal/byte.tif", "cogeotiff/big_cog.tiff", "gdal/separate_tiled.tif",
                "rasterio/cogeo.tif", "gdal/bigtiff_one_block_be_long8.tif", "cogeotiff/model_transformation.tif")
]
EXAMPLES = int(os.environ.get("RASTERDUCK_FUZZ_EXAMPLES", "3000"))
RUNS = {"count": 0}


def parse_bytes(data: bytes) -> None:
    async def fetch(ranges: Sequence[tuple[int, int]], allow_short: bool = False) -> list[bytes]:
        out = []
        for s, n in ranges:
            chunk = data[s : s + n]
            if len(chunk) < n and not allow_short:
                raise RasterduckError("read past the end of the data")
            out.append(chunk)
        return out

    RUNS["count"] += 1
    try:
        h = asyncio.run(asyncio.wait_for(read_header("mem://fuzz.tif", fetch), timeout=10))
    except RasterduckError as exc:
        assert "mem://fuzz.tif" in str(exc)
        return
    # a header that parses is internally consistent
    im = h.image
    assert im.width > 0 and im.height > 0
    assert len(im.offsets) == len(im.byte_counts) >= im.tiles_per_plane


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 12))):
        if len(seed) < 8:
            break
        kind = draw(st.sampled_from(["flip", "byte", "word", "cut"]))
        pos = draw(st.integers(0, min(len(seed) - 1, 4096)))
        if kind == "flip":
            seed[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            seed[pos] = draw(st.integers(0, 255))
        elif kind == "word":
            seed[pos : pos + 4] = draw(st.binary(min_size=4, max_size=4))
        else:
            del seed[draw(st.integers(pos, len(seed))) :]
    return bytes(seed)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_mutated_headers(data: bytes) -> None:
    parse_bytes(data)


@settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=True)
@given(st.sampled_from([b"II*\x00", b"MM\x00*", b"II+\x00\x08\x00\x00\x00", b"MM\x00+\x00\x08\x00\x00"]),
       st.binary(min_size=0, max_size=600))
def test_random_bytes_after_magic(magic: bytes, rest: bytes) -> None:
    parse_bytes(magic + rest)


def test_fuzz_ran() -> None:
    # reported in the closing note: how many inputs the two fuzzers above fed the parser
    print(f"header fuzz executions: {RUNS['count']}")
