"""The header parser against GDAL's view of every corpus file (MANIFEST.json)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rasterduck.errors import TiffFormatError
from rasterduck.tiff.header import read_header
from rasterduck.tiff.model import TiffHeader

from ._paths import corpus_dir

MANIFEST = json.loads((corpus_dir() / "MANIFEST.json").read_text())["files"]


def file_fetch(path: Path):
    """Positional reads from a real file; answers are short only where the file ends."""

    async def fetch(ranges: Sequence[tuple[int, int]], allow_short: bool = False) -> list[bytes]:
        with open(path, "rb") as f:
            out = []
            for start, length in ranges:
                f.seek(start)
                data = f.read(length)
                if len(data) < length and not allow_short:
                    raise OSError("short read")
                out.append(data)
            return out

    return fetch


def parse(rel: str) -> TiffHeader:
    path = corpus_dir() / rel
    return asyncio.run(read_header(str(path), file_fetch(path)))


def _f(v):
    return float(v) if not isinstance(v, str) else float(v.replace("inf", "inf"))


@pytest.mark.parametrize("rel", sorted(MANIFEST))
def test_header_matches_gdal(rel: str) -> None:
    m = MANIFEST[rel]
    s = m["summary"]
    h = parse(rel)
    im = h.image
    assert (im.width, im.height) == (s["width"], s["height"])
    assert im.tiled == s["tiled"]
    if s["tiled"]:
        assert [im.tile_width, im.tile_height] == list(s["tile_size"]) or (im.tile_height, im.tile_width) == tuple(s["tile_size"])
    else:
        assert im.tile_height == min(s["rows_per_strip"], s["height"])
    assert im.samples_per_pixel == s["samples_per_pixel"]
    assert im.planar_configuration == (1 if s["planar_config"] == "contig" or s["samples_per_pixel"] == 1 else 2)
    assert im.compression == s["compression_code"]
    assert im.predictor == s["predictor"]
    assert h.byte_order == ("<" if s["byte_order"] == "little" else ">")
    assert h.bigtiff == s["bigtiff"]
    tiff_dtype = s["tiff_dtype"]
    if tiff_dtype == "bool":
        assert im.dtype == "uint8" and im.bits_per_sample[0] == 1
    elif tiff_dtype.startswith("complex"):
        assert im.dtype is None
    else:
        assert im.dtype == tiff_dtype
    # nodata
    if s["nodata"] is None:
        assert h.geo.nodata is None
    else:
        want = _f(s["nodata"])
        assert h.geo.nodata is not None
        if math.isnan(want):
            assert math.isnan(h.geo.nodata)
        else:
            assert h.geo.nodata == pytest.approx(want, rel=1e-7)
    # transform
    gt = s["transform_gdal"]
    if s["georef_tags"] in ("PixelScale+Tiepoint", "ModelTransformation"):
        assert h.geo.transform is not None
        a, b, c, d, e, f = h.geo.transform
        got = [c, a, b, f, d, e]
        for x, y in zip(got, gt, strict=True):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-9)
    else:
        assert h.geo.transform is None and h.geo.problem
    # CRS
    want_epsg = s["crs_epsg"]
    if rel == "gdal/compdcrs_without_gtcitation.tif":
        want_epsg = 32632  # GDAL reports the compound CRS; its horizontal part is EPSG:32632
    if s["georef_tags"] == "GCP tiepoints":
        want_epsg = 4326  # GDAL puts the keys' CRS on the GCPs, not on the raster
    assert h.geo.epsg == want_epsg
    if want_epsg is None and m.get("crs", {}) and m["crs"].get("wkt") and not m["crs"]["wkt"].startswith("LOCAL_CS"):
        from pyproj import CRS

        assert h.geo.crs_wkt is not None, "a user-defined CRS must be kept as WKT"
        ours, theirs = CRS.from_wkt(h.geo.crs_wkt), CRS.from_wkt(m["crs"]["wkt"])
        assert ours.is_projected == theirs.is_projected
    # overviews and masks
    assert len(h.overviews) == s["overview_count"]
    assert len(h.masks) == s["internal_mask_ifds"]
    assert int(np.count_nonzero(im.byte_counts == 0)) == s["sparse_blocks_ifd0"]


def test_cog_header_one_request() -> None:
    for rel in ["rio-tiler/cog.tif", "rasterio/cogeo.tif", "rio-tiler/web.tif", "cogeotiff/rgba8_cog.tiff"]:
        assert parse(rel).requests == 1, rel


def test_garbage_and_truncation_name_the_url(tmp_path: Path) -> None:
    src = (corpus_dir() / "gdal/byte.tif").read_bytes()
    bad = tmp_path / "bad.tif"
    for data in [b"", b"GIF89a", src[:10], src[:300], b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * 100]:
        bad.write_bytes(data)
        with pytest.raises(TiffFormatError) as ei:
            asyncio.run(read_header(str(bad), file_fetch(bad)))
        assert str(bad) in str(ei.value)


def test_ifd_cycle_is_detected(tmp_path: Path) -> None:
    # one IFD whose next pointer points at itself
    import struct

    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 256, 3, 1, 1) + struct.pack("<I", 8)
    data = b"II*\x00" + struct.pack("<I", 8) + ifd
    p = tmp_path / "cycle.tif"
    p.write_bytes(data)
    with pytest.raises(TiffFormatError, match="loops"):
        asyncio.run(read_header(str(p), file_fetch(p)))


# ---- over HTTP: what a build costs in requests --------------------------------------------------
def _http_header(server, rel: str) -> TiffHeader:
    from rasterduck.build.api import header_fetcher
    from rasterduck.io.backend import DefaultBackend
    from rasterduck.io.loop import run_sync

    backend = DefaultBackend()
    url = server.url("geotiff/" + rel)
    try:
        return run_sync(read_header(url, header_fetcher(backend, url)))
    finally:
        run_sync(backend.close())  # else its keep-alive connections outlive the test


@pytest.mark.parametrize("rel", ["rio-tiler/cog.tif", "rasterio/cogeo.tif", "rio-tiler/web.tif", "cogeotiff/rgba8_cog.tiff",
                                 "rio-tiler/cog_int16.tif", "gdal/byte.tif"])
def test_cog_header_is_one_http_request(server, rel: str) -> None:
    h = _http_header(server, rel)
    assert server.requests == 1, server.log
    assert h.image.width == MANIFEST[rel]["summary"]["width"]


def test_tiff_with_ifd_at_end_takes_few_requests(server) -> None:
    # RGB.byte.tif is a striped GeoTIFF (1.7 MB) whose directory sits at the end of the file
    h = _http_header(server, "rasterio/RGB.byte.tif")
    assert h.image.width == 791
    assert 2 <= server.requests <= 4, server.requests


def test_every_corpus_header_parses_over_http(server) -> None:
    for rel in sorted(MANIFEST):
        server.reset_counters()
        h = _http_header(server, rel)
        assert (h.image.width, h.image.height) == (MANIFEST[rel]["summary"]["width"], MANIFEST[rel]["summary"]["height"])
        assert server.requests == h.requests <= 4, (rel, server.requests)
