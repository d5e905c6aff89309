"""The read kernel's I/O and decode plan, on GeoTIFFs written by GDAL (rasterio) and served over HTTP.

Oracles: the server's own request log and counters (requests, byte ranges), tile tables read by tifffile,
`rasterio.mask.mask` and `dataset.read` for pixels, and a counting wrapper around the tile decoder.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pytest
import rasterio
import rasterio.mask
import shapely
import tifffile
from rasterio.io import MemoryFile
from rasterio.mask import mask as rio_mask
from rasterio.transform import from_origin
from rasterio.windows import Window as RioWindow

import rasterduck
import rasterduck.core.read as kernel
from rasterduck import ReadResult
from rasterduck.core.read import BandSource, ReadRequest, ReadStats, band_sources, read_batch
from rasterduck.errors import BandNotFoundError, FetchError, PixelBudgetExceeded, RasterduckError
from rasterduck.io.backend import DefaultBackend
from rasterduck.io.loop import run_sync
from rasterduck.io.ranges import coalesce

from . import _tiffgen
from ._paths import testdata_dir as data_root

pytestmark = [pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]

ORIGIN = (600000.0, 5000000.0)
RES = 10.0


def write_cog(path: Path, *, width: int = 1024, height: int = 768, count: int = 1, dtype: str = "uint16",
              block: int = 128, nodata: float | None = None, interleave: str = "band", compress: str = "DEFLATE",
              predictor: int = 2, data: np.ndarray | None = None, sparse_window: RioWindow | None = None) -> Path:
    """A tiled GeoTIFF written by GDAL; with `sparse_window` only that block is written (SPARSE_OK)."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    if data is None:
        data = rng.integers(1, 60000, (count, height, width)).astype(dtype)
    profile: dict[str, Any] = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype,
                                   crs="EPSG:32633", transform=from_origin(*ORIGIN, RES, RES), tiled=True,
                                   blockxsize=block, blockysize=block, compress=compress, predictor=predictor,
                                   interleave=interleave, nodata=nodata)
    if sparse_window is not None:
        profile["sparse_ok"] = True
    with rasterio.open(path, "w", **profile) as dst:
        if sparse_window is None:
            dst.write(data)
        else:
            r, c = int(sparse_window.row_off), int(sparse_window.col_off)
            dst.write(data[:, r : r + int(sparse_window.height), c : c + int(sparse_window.width)],
                      window=sparse_window)
    return path


def world_box(col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    x0, y0 = ORIGIN
    return shapely.box(x0 + col0 * RES, y0 - row1 * RES, x0 + col1 * RES, y0 - row0 * RES)


def sources_of(url: str, bands: list[str] | None = None) -> list[BandSource]:
    coll = rasterduck.build_collection([url])
    acc = next(coll.iterate_rasters())
    return band_sources(acc, bands or sorted(acc.info.band_metadata, key=lambda b: int(b[1:])))


def tile_table(path: Path) -> tuple[np.ndarray, np.ndarray, int, int, int, int]:
    """(offsets, byte counts, tile width, tile height, image width, image height) of IFD 0, per tifffile."""
    with tifffile.TiffFile(path) as tf:
        p = tf.pages[0]
        return (np.asarray(p.dataoffsets), np.asarray(p.databytecounts), p.tilewidth, p.tilelength,
                p.imagewidth, p.imagelength)


def needed_tiles(path: Path, aois: list[shapely.Geometry], plane: int = 0) -> set[tuple[int, int]]:
    """(offset, length) of every tile the AOIs' rasterio windows touch (plane `plane` of a planar file)."""
    offs, counts, tw, th, w, h = tile_table(path)
    across, down = -(-w // tw), -(-h // th)
    out = set()
    with rasterio.open(path) as src:
        for g in aois:
            try:
                win = rasterio.features.geometry_window(src, [g]).intersection(RioWindow(0, 0, w, h))
            except rasterio.errors.WindowError:
                continue
            r0, c0 = int(win.row_off), int(win.col_off)
            r1, c1 = r0 + int(win.height) - 1, c0 + int(win.width) - 1
            for tr in range(r0 // th, r1 // th + 1):
                for tc in range(c0 // tw, c1 // tw + 1):
                    k = plane * across * down + tr * across + tc
                    if counts[k]:
                        out.add((int(offs[k]), int(counts[k])))
    return out


def logged_ranges(server: Any) -> list[tuple[int, int]]:
    """(start, length) of every GET the server answered, from its log."""
    out = []
    for rec in server.log:
        m = re.fullmatch(r"bytes=(\d+)-(\d+)", rec.range or "")
        assert m is not None, f"request without a byte range: {rec}"
        out.append((int(m.group(1)), int(m.group(2)) - int(m.group(1)) + 1))
    return out


@pytest.fixture
def backend() -> Iterator[DefaultBackend]:
    be = DefaultBackend()
    yield be
    run_sync(be.close())


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None]]:
    """Every decode_tile call the kernel makes: (stored bytes, rows asked for)."""
    calls: list[tuple[int, int | None]] = []
    real = kernel.decode_tile

    def counting(data: Any, fmt: Any, rows: int | None = None, **region: Any) -> np.ndarray:
        calls.append((len(data), rows))
        return real(data, fmt, rows, **region)

    monkeypatch.setattr(kernel, "decode_tile", counting)
    return calls


def read(reqs: list[ReadRequest], backend: Any, **kw: Any) -> list[ReadResult | BaseException | None]:
    return run_sync(read_batch(reqs, backend, **kw))


def oracle(path: Path, geom: shapely.Geometry, all_touched: bool = False) -> np.ndarray:
    with rasterio.open(path) as src:
        return rio_mask(src, [geom], crop=True, all_touched=all_touched, filled=True, nodata=src.nodata or 0,
                        indexes=list(src.indexes))[0]


def aoi_and_dataset_mask(path: Path, geom: shapely.Geometry, window: Any) -> tuple[np.ndarray, np.ndarray]:
    """GDAL's view of a result's window: the AOI mask (rasterio's cropped geometry mask) and the dataset mask."""
    with rasterio.open(path) as ds:
        aoi = ~rasterio.mask.raster_geometry_mask(ds, [geom], crop=True)[0]
        win = RioWindow(window.col_off, window.row_off, window.width, window.height)
        return aoi, ds.dataset_mask(window=win) != 0


def triangle() -> shapely.Polygon:
    """An AOI whose mask matters (a triangle across the first 256 x 256 pixels, in EPSG:32633)."""
    x0, y0 = ORIGIN
    return shapely.Polygon([(x0 + 20.5 * RES, y0 - 30.2 * RES), (x0 + 200.3 * RES, y0 - 40.7 * RES),
                            (x0 + 90.1 * RES, y0 - 220.9 * RES)])


# ------------------------------------------------------------------------------------------------
# requests


@pytest.mark.parametrize("max_gap", [0, 64 * 1024])
def test_requests_are_the_coalesced_tile_ranges(tmp_path: Path, make_server: Callable[..., Any],
                                                max_gap: int) -> None:
    """Every request is one coalesced group of needed tile ranges; no header byte is read again."""
    path = write_cog(tmp_path / "a.tif")
    srv = make_server()
    url = srv.url("a.tif")
    sources = sources_of(url)
    rng = np.random.default_rng(3)
    aois = []
    for _ in range(40):
        c, r = rng.uniform(-20, 1000), rng.uniform(-20, 740)
        aois.append(world_box(c, r, c + rng.uniform(1, 90), r + rng.uniform(1, 90)))
    be = DefaultBackend(max_gap=max_gap)
    try:
        srv.reset()
        results = read([ReadRequest("a", g, "EPSG:32633", sources) for g in aois], be)
    finally:
        run_sync(be.close())
    tiles = needed_tiles(path, aois)
    expected = sorted((m.start, m.length) for m in coalesce(sorted(tiles), max_gap, be.http.max_size))
    assert sorted(logged_ranges(srv)) == expected
    assert srv.requests == len(expected)
    if max_gap == 0:
        assert len(expected) > 5  # the plan really is made of several separate ranges
    for g, r in zip(aois, results, strict=True):
        assert isinstance(r, ReadResult)
        assert np.array_equal(r.data, oracle(path, g))


def test_shared_tile_is_fetched_and_decoded_once(tmp_path: Path, make_server: Callable[..., Any],
                                                 backend: DefaultBackend,
                                                 decodes: list[tuple[int, int | None]]) -> None:
    """Many AOIs x 3 bands (pixel-interleaved) x 2 records inside one tile: one request, one decode."""
    path = write_cog(tmp_path / "rgb.tif", count=3, dtype="uint8", interleave="pixel")
    srv = make_server()
    sources = sources_of(srv.url("rgb.tif"))
    aois = [world_box(130 + i, 140 + i, 150 + 2 * i, 170 + i) for i in range(8)]
    reqs = [ReadRequest(rec, g, "EPSG:32633", [s], geometry_index=i)
            for rec in ("scene-1", "scene-2") for i, g in enumerate(aois) for s in sources]
    reqs += [ReadRequest(rec, g, "EPSG:32633", sources) for rec in ("scene-1", "scene-2") for g in aois]
    srv.reset()
    stats = ReadStats()
    results = read(reqs, backend, stats=stats)
    (tile,) = needed_tiles(path, aois)
    assert logged_ranges(srv) == [tile]
    assert len(decodes) == 1 and decodes[0][0] == tile[1]
    assert stats.tiles == 1 and stats.decoded == 1
    for req, r in zip(reqs, results, strict=True):
        assert isinstance(r, ReadResult)
        ref = oracle(path, req.geometry)
        idx = [int(s.band[1:]) - 1 for s in req.bands]
        assert np.array_equal(r.data, ref[idx]) and r.bands == [s.band for s in req.bands]


def test_only_the_needed_rows_are_decoded(tmp_path: Path, make_server: Callable[..., Any],
                                          backend: DefaultBackend, decodes: list[tuple[int, int | None]]) -> None:
    """An AOI in the top rows of a tile row decodes the tiles down to its last row, not to 128."""
    path = write_cog(tmp_path / "rows.tif")
    srv = make_server()
    sources = sources_of(srv.url("rows.tif"))
    g = world_box(100.5, 129.2, 300.2, 140.7)  # rows 129..140: rows 1..12 of the second tile row
    (r,) = read([ReadRequest("r", g, "EPSG:32633", sources)], backend)
    assert isinstance(r, ReadResult) and np.array_equal(r.data, oracle(path, g))
    assert sorted(rows for _n, rows in decodes) == [13, 13, 13]


def test_planar_and_chunky_multiband_reads(tmp_path: Path, make_server: Callable[..., Any],
                                           backend: DefaultBackend) -> None:
    """Band-interleaved files fetch one plane per band; bands in any order and subset equal rasterio."""
    for name, inter in (("band.tif", "band"), ("pixel.tif", "pixel")):
        path = write_cog(tmp_path / name, count=4, dtype="int16", interleave=inter, nodata=-5, block=64)
        srv = make_server()
        sources = sources_of(srv.url(name))
        g = shapely.Polygon([(0, 0), (200, 30), (150, 170), (10, 120)])
        g = shapely.transform(g, lambda xy: np.column_stack([ORIGIN[0] + xy[:, 0] * RES, ORIGIN[1] - xy[:, 1] * RES]))
        pick = [sources[2], sources[0], sources[3]]
        srv.reset()
        (r,) = read([ReadRequest("m", g, "EPSG:32633", pick)], backend)
        assert isinstance(r, ReadResult)
        assert np.array_equal(r.data, oracle(path, g)[[2, 0, 3]])
        planes = 3 if inter == "band" else 1
        tiles = set().union(*(needed_tiles(path, [g], plane=p) for p in ([2, 0, 3] if inter == "band" else [0])))
        assert len(tiles) == planes * len(needed_tiles(path, [g]))
        assert sorted(logged_ranges(srv)) == sorted((m.start, m.length) for m in coalesce(sorted(tiles)))


# ------------------------------------------------------------------------------------------------
# sparse tiles


@pytest.mark.parametrize("nodata", [None, 7])
def test_sparse_tiles_read_as_nodata_and_are_never_fetched(tmp_path: Path, make_server: Callable[..., Any],
                                                          backend: DefaultBackend, nodata: int | None) -> None:
    path = write_cog(tmp_path / "sparse.tif", nodata=nodata, sparse_window=RioWindow(128, 128, 256, 128))
    _offs, counts, *_ = tile_table(path)
    assert (counts == 0).sum() > 30  # GDAL left the unwritten tiles sparse
    srv = make_server()
    sources = sources_of(srv.url("sparse.tif"))
    g = world_box(60.3, 90.1, 420.8, 300.4)  # crosses written and sparse tiles
    srv.reset()
    (r,) = read([ReadRequest("s", g, "EPSG:32633", sources)], backend)
    assert isinstance(r, ReadResult)
    assert np.array_equal(r.data, oracle(path, g))
    assert sorted(logged_ranges(srv)) == sorted((m.start, m.length) for m in coalesce(sorted(needed_tiles(path, [g]))))
    assert r.window is not None
    with rasterio.open(path) as src:
        aoi = ~rio_mask(src, [g], crop=True, filled=False, indexes=1)[0].mask
    rows = np.arange(r.window.row_off, r.window.row_stop)[:, None]
    cols = np.arange(r.window.col_off, r.window.col_stop)[None, :]
    written = (rows >= 128) & (rows < 256) & (cols >= 128) & (cols < 384)
    assert np.array_equal(r.valid, aoi & written)
    assert r.nodata == (nodata or 0)


# ------------------------------------------------------------------------------------------------
# GDAL's mask bands: internal masks and alpha


def _masked_file(path: Path, kind: str) -> Path:
    """A 256x192 uint8 file whose GDAL mask hides a disc: an internal mask IFD, or an alpha band
    (pixel- or band-interleaved); `plain` has no mask at all."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    h, w = 192, 256
    yy, xx = np.mgrid[0:h, 0:w]
    hole = (yy - 90) ** 2 + (xx - 120) ** 2 < 60**2
    count = {"internal": 3, "alpha_pixel": 4, "alpha_band": 4, "plain": 1}[kind]
    data = rng.integers(1, 255, (count, h, w)).astype("uint8")
    profile: dict[str, Any] = dict(driver="GTiff", width=w, height=h, count=count, dtype="uint8", crs="EPSG:32633",
                                   transform=from_origin(*ORIGIN, RES, RES), tiled=True, blockxsize=64,
                                   blockysize=64, compress="DEFLATE")
    if kind.startswith("alpha"):
        data[3] = np.where(hole, 0, 255)
        profile.update(photometric="RGB", alpha="YES", interleave="pixel" if kind == "alpha_pixel" else "band")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if kind == "internal":
            dst.write_mask(np.where(hole, 0, 255).astype("uint8"))
    with rasterio.open(path) as src:
        expected = {"internal": "per_dataset", "alpha_pixel": "alpha", "alpha_band": "alpha", "plain": "all_valid"}
        assert expected[kind] in {f.name for f in src.mask_flag_enums[0]}
    return path


def test_internal_masks_and_alpha_fill_like_gdal(tmp_path: Path, make_server: Callable[..., Any],
                                                 backend: DefaultBackend) -> None:
    """Pixels GDAL's mask band hides read as the fill value (rasterio.mask.mask reads masked=True); the
    alpha band itself is never masked; in a request mixing files, each file's mask covers its own bands."""
    kinds = ("internal", "alpha_pixel", "alpha_band", "plain")
    paths = {k: _masked_file(tmp_path / f"{k}.tif", k) for k in kinds}
    srv = make_server()
    src = {k: sources_of(srv.url(p.name)) for k, p in paths.items()}
    g = shapely.Polygon([(ORIGIN[0] + 300, ORIGIN[1] - 200), (ORIGIN[0] + 2400, ORIGIN[1] - 600),
                         (ORIGIN[0] + 1900, ORIGIN[1] - 1700), (ORIGIN[0] + 500, ORIGIN[1] - 1500)])
    reqs = [ReadRequest(k, g, "EPSG:32633", src[k]) for k in kinds]
    reqs.append(ReadRequest("mixed", g, "EPSG:32633", [src["internal"][1], src["plain"][0], src["alpha_band"][2]]))
    results = read(reqs, backend)
    refs = {k: oracle(paths[k], g) for k in kinds}
    for k, r in zip(kinds, results[:-1], strict=True):
        assert isinstance(r, ReadResult)
        assert np.array_equal(r.data, refs[k]), k
        assert r.window is not None
        aoi, dsmask = aoi_and_dataset_mask(paths[k], g, r.window)
        assert np.array_equal(r.valid, aoi & dsmask), k
        if k != "plain":
            assert (r.data[0][aoi & ~dsmask] == 0).all() and (aoi & ~dsmask).any()
    mixed = results[-1]
    assert isinstance(mixed, ReadResult)
    assert np.array_equal(mixed.data[0], refs["internal"][1]) and np.array_equal(mixed.data[1], refs["plain"][0])
    assert np.array_equal(mixed.data[2], refs["alpha_band"][2])
    masks = [r.valid for r in results[:3]]  # valid: AOI and every file's mask
    assert np.array_equal(mixed.valid, masks[0] & masks[2])
    # a join's rows of one record share its band list: each pair still gets its own masks
    g2 = shapely.box(ORIGIN[0] + 1200, ORIGIN[1] - 1900, ORIGIN[0] + 2500, ORIGIN[1] - 900)
    shared = read([ReadRequest(k, geom, "EPSG:32633", src[k]) for k in kinds for geom in (g, g2)], backend)
    for (k, geom), r in zip([(k, geom) for k in kinds for geom in (g, g2)], shared, strict=True):
        assert isinstance(r, ReadResult) and r.window is not None
        assert np.array_equal(r.data, oracle(paths[k], geom)), k
        aoi, dsmask = aoi_and_dataset_mask(paths[k], geom, r.window)
        assert np.array_equal(r.valid, aoi & dsmask), k


# ------------------------------------------------------------------------------------------------
# every codec / layout of the decoder's generated files


def _generated_oracle(spec: _tiffgen.Spec, path: Path, geom: shapely.Geometry, all_touched: bool) -> np.ndarray:
    """rasterio.mask.mask; for lossy or GDAL-unreadable files, on tifffile's pixels with GDAL's grid and masks."""
    if spec.oracle == "gdal" or (spec.oracle == "lossy" and spec.max_gdal_diff == 0):
        with rasterio.open(path) as src:
            return rio_mask(src, [geom], crop=True, all_touched=all_touched, filled=True, nodata=src.nodata or 0,
                            indexes=list(src.indexes))[0]
    arr = tifffile.imread(path, key=0)
    arr = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr[None]
    profile = dict(driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=arr.dtype)
    if spec.oracle == "tifffile":  # GDAL cannot open it; tifffile wrote it without georeferencing
        profile.update(transform=rasterio.Affine.identity(), crs=None, nodata=None)
    else:
        with rasterio.open(path) as src:
            profile.update(transform=src.transform, crs=src.crs, nodata=src.nodata)
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(arr)
        with mem.open() as src:
            return rio_mask(src, [geom], crop=True, all_touched=all_touched, filled=True, nodata=src.nodata or 0,
                            indexes=list(src.indexes))[0]


def test_every_generated_codec_and_layout_equals_rasterio(tmp_path: Path, make_server: Callable[..., Any],
                                                          backend: DefaultBackend) -> None:
    """LERC (+NaN masks), predictors on all sample sizes, big-endian, float16, 1-bit, strips, WebP, JPEG,
    JPEG-XL, alpha: masked reads of polygons across tile edges equal GDAL's (tifffile's for lossy
    streams GDAL decodes differently and for JPEG-XL, which this GDAL lacks)."""
    from rasterduck.tiff.decode import supported_compressions

    specs = [s for s in _tiffgen.SPECS if s.expect.get("compression", 1) in supported_compressions()]
    assert len(specs) >= len(_tiffgen.SPECS) - 2
    paths = {s.name: _tiffgen.write(s, tmp_path) for s in specs}
    srv = make_server()
    coll = rasterduck.build_collection([srv.url(p.name) for p in paths.values()])
    reqs, cases = [], []
    for acc in coll.iterate_rasters():
        bands = sorted(acc.info.band_metadata, key=lambda b: int(b[1:]))
        spec = next(s for s in specs if s.name == acc.id)
        meta = band_sources(acc, bands)[0].meta
        for k, (c0, r0, c1, r1) in enumerate([(3.5, 5.2, 97.7, 61.1), (60.1, 40.2, 149.0, 99.9), (-5, -5, 8, 9)]):
            pix = shapely.Polygon([(c0, r0), (c1, r0 + 3), (c1 - 4, r1), (c0 + 2, r1 - 1)])
            a, b, c, d, e, f = meta.affine
            geom = shapely.transform(pix, lambda xy: np.column_stack(
                [a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f]))  # noqa: B023
            reqs.append(ReadRequest(acc.id, geom, acc.info.crs, band_sources(acc, bands), all_touched=k == 1))
            cases.append((spec, geom, k == 1))
    results = read(reqs, backend)
    assert len(results) == 3 * len(specs)
    for (spec, geom, touched), r in zip(cases, results, strict=True):
        assert isinstance(r, ReadResult), (spec.name, r)
        ref = _generated_oracle(spec, paths[spec.name], geom, touched)
        assert np.array_equal(r.data.astype(ref.dtype), ref, equal_nan=ref.dtype.kind == "f"), spec.name


# ------------------------------------------------------------------------------------------------
# windows, misses, errors


def test_window_requests_are_clipped_and_misses_are_none(tmp_path: Path, make_server: Callable[..., Any],
                                                         backend: DefaultBackend) -> None:
    path = write_cog(tmp_path / "w.tif", width=300, height=200, block=64)
    srv = make_server()
    sources = sources_of(srv.url("w.tif"))
    reqs = [ReadRequest("w", None, None, sources, window=(250, 150, 100, 100)),
            ReadRequest("w", None, None, sources, window=(-10, -10, 20, 15)),
            ReadRequest("w", None, None, sources, window=(300, 0, 5, 5)),
            ReadRequest("w", world_box(400, 400, 500, 500), "EPSG:32633", sources),
            ReadRequest("w", shapely.Point(ORIGIN[0] - 5, ORIGIN[1]), "EPSG:32633", sources)]
    r1, r2, r3, r4, r5 = read(reqs, backend)
    with rasterio.open(path) as src:
        assert isinstance(r1, ReadResult) and np.array_equal(r1.data, src.read(window=RioWindow(250, 150, 50, 50)))
        assert isinstance(r2, ReadResult) and np.array_equal(r2.data, src.read(window=RioWindow(0, 0, 10, 5)))
        assert r1.transform == tuple(src.window_transform(RioWindow(250, 150, 50, 50)))[:6]
    assert r3 is None and r4 is None and r5 is None


def test_errors_stay_in_their_slot(tmp_path: Path, make_server: Callable[..., Any], backend: DefaultBackend) -> None:
    """A file that fails to fetch fails only its own pairs, named by record, band and URL."""
    write_cog(tmp_path / "ok.tif", width=256, height=256, block=64)
    write_cog(tmp_path / "bad.tif", width=256, height=256, block=64)
    srv = make_server()
    ok, bad = sources_of(srv.url("ok.tif")), sources_of(srv.url("bad.tif"))
    srv.add_fault("status", path="/bad.tif", status=404)
    g = world_box(10, 10, 90, 90)
    res = read([ReadRequest("good", g, "EPSG:32633", ok), ReadRequest("broken", g, "EPSG:32633", bad)], backend)
    assert isinstance(res[0], ReadResult)
    assert isinstance(res[1], FetchError) and res[1].record_id == "broken" and "bad.tif" in str(res[1])


def test_pixel_budget_refuses_before_any_request(tmp_path: Path, make_server: Callable[..., Any],
                                                 backend: DefaultBackend) -> None:
    write_cog(tmp_path / "big.tif")
    srv = make_server()
    sources = sources_of(srv.url("big.tif"))
    srv.reset()
    with pytest.raises(PixelBudgetExceeded):
        read([ReadRequest("b", world_box(0, 0, 1000, 700), "EPSG:32633", sources)], backend, pixel_budget=100_000)
    assert srv.requests == 0


def test_band_problems_are_named(tmp_path: Path, make_server: Callable[..., Any], backend: DefaultBackend) -> None:
    write_cog(tmp_path / "one.tif", width=128, height=128, block=64)
    write_cog(tmp_path / "two.tif", width=128, height=128, block=64, dtype="int16")
    srv = make_server()
    coll = rasterduck.build_collection([srv.url("one.tif")])
    with pytest.raises(BandNotFoundError, match="nope"):
        band_sources(next(coll.iterate_rasters()), ["nope"])
    write_cog(tmp_path / "wide.tif", width=192, height=128, block=64)
    mixed = [sources_of(srv.url("one.tif"))[0], sources_of(srv.url("two.tif"))[0]]
    grids = [sources_of(srv.url("one.tif"))[0], sources_of(srv.url("wide.tif"))[0]]
    # pairs of one record share their band list: every pair still gets the error
    got = read([ReadRequest("mixed", world_box(1, 1, 9, 9), "EPSG:32633", mixed),
                ReadRequest("mixed", world_box(2, 2, 9, 9), "EPSG:32633", mixed),
                ReadRequest("grids", world_box(1, 1, 9, 9), "EPSG:32633", grids)], backend)
    assert all(isinstance(r, RasterduckError) for r in got)
    assert ["dtypes" in str(r) for r in got] == [True, True, False] and "different grids" in str(got[2])
    assert [r.record_id for r in got] == ["mixed", "mixed", "grids"]  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------
# a collection written by rasteret


def test_rasteret_collection_reads_equal_rasterio(server: Any) -> None:
    """Records written by rasteret 0.4.1 (relative hrefs moved to the server) read like GDAL, all records
    planned as one batch by Collection.read, AOIs in lon/lat."""
    coll = rasterduck.open_collection(data_root() / "collections" / "rasteret-0.4.1-corpus")
    coll = coll.rewrite_hrefs({"geotiff/": server.url("geotiff/")})
    rng = np.random.default_rng(11)
    aois: list[shapely.Geometry] = []
    where: dict[int, str] = {}
    for acc in coll.iterate_rasters():
        x0, y0, x1, y1 = acc.info.bbox
        for _ in range(3):
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            rx, ry = (x1 - x0) * rng.uniform(0.05, 0.3), (y1 - y0) * rng.uniform(0.05, 0.3)
            ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
            where[len(aois)] = acc.id
            aois.append(shapely.Polygon(np.column_stack([cx + rx * np.cos(ang), cy + ry * np.sin(ang)])))
    by_id = {acc.id: acc for acc in coll.iterate_rasters()}
    bands_of = {rid: sorted(acc.info.band_metadata) for rid, acc in by_id.items()}
    checked = 0
    for rid in by_id:
        results = coll.read([aois[i] for i, r in where.items() if r == rid], bands_of[rid])
        mine = [r for r in results if r.record_id == rid]
        assert mine
        for r in mine:
            acc = by_id[rid]
            href = str(acc.info.assets[r.bands[0]]["href"]).replace(server.url("geotiff/"), "")
            path = data_root() / "geotiff" / href
            geom = [aois[i] for i, rr in where.items() if rr == rid][r.geometry_index or 0]
            with rasterio.open(path) as src:
                tr = pyproj.Transformer.from_crs("EPSG:4326", src.crs.to_wkt(), always_xy=True)
                local = shapely.transform(geom, lambda x, y: tr.transform(x, y), interleaved=False)  # noqa: B023
                idx = [int(acc.info.assets[b]["band_index"] or 0) + 1 for b in r.bands]
                ref = rio_mask(src, [local], crop=True, filled=True, nodata=src.nodata or 0, indexes=idx)[0]
            assert np.array_equal(r.data, ref, equal_nan=True), (rid, r.geometry_index)
            checked += 1
    assert checked >= len(by_id)


def test_file_groups_share_no_file_and_keep_shared_tiles_single(tmp_path: Path, make_server: Callable[..., Any],
                                                                 backend: DefaultBackend) -> None:
    """Allocation and fetching go one file group at a time: pairs reading a common file land in one group
    (so a tile they share is still fetched once), pairs of other files in their own, in input order."""
    for name in ("a", "b", "c"):
        write_cog(tmp_path / f"{name}.tif", block=256)
    srv = make_server()
    src = {name: sources_of(srv.url(f"{name}.tif"))[0] for name in ("a", "b", "c")}
    g = world_box(10, 10, 60, 40)
    reqs = [ReadRequest("r1", g, "EPSG:32633", [src["a"]]), ReadRequest("r2", g, "EPSG:32633", [src["b"]]),
            ReadRequest("r3", g, "EPSG:32633", [src["c"], src["a"]]), ReadRequest("r4", None, None, [src["b"]])]
    jobs = kernel.plan_jobs(kernel._Planner(), reqs, None)
    assert isinstance(jobs[3], RasterduckError)  # no geometry: an error in its slot, in no group
    groups = kernel.file_groups(jobs)
    assert [[j.index for j in grp] for grp in groups] == [[0, 2], [1]]
    # band lists shared by several jobs (a record's list, for all its AOIs) are joined once; c's list is
    # seen before the job that ties c to a, and still lands in a's group
    la, lb, lc, lca = [src["a"]], [src["b"]], [src["c"]], [src["c"], src["a"]]
    shared = [ReadRequest(f"s{i}", g, "EPSG:32633", bands) for i, bands in enumerate([la, lc, lb, lc, lca, lb, la])]
    groups = kernel.file_groups(kernel.plan_jobs(kernel._Planner(), shared, None))
    assert [[j.index for j in grp] for grp in groups] == [[0, 1, 3, 4, 6], [2, 5]]
    srv.reset()
    results = read(reqs[:3], backend)
    tiles = sorted(needed_tiles(tmp_path / f"{n}.tif", [g]).pop() for n in "abc")  # one per file: a's once
    got = sorted(logged_ranges(srv))
    assert [o for o, _n in got] == [o for o, _n in tiles]
    assert all(n <= full for (_o, n), (_p, full) in zip(got, tiles, strict=True))  # a prefix, or whole
    for r, files in zip(results, (["a"], ["b"], ["c", "a"]), strict=True):
        assert isinstance(r, ReadResult)
        expected = np.concatenate([oracle(tmp_path / f"{n}.tif", g) for n in files])
        assert np.array_equal(r.data, expected)


def _tile0(path: Path) -> tuple[int, int]:
    """(offset, byte count) of the first tile of a file's full-resolution image."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        return int(page.dataoffsets[0]), int(page.databytecounts[0])


def test_top_rows_of_a_tile_fetch_only_a_prefix(tmp_path: Path, make_server: Callable[..., Any],
                                                backend: DefaultBackend) -> None:
    """An AOI in the top rows of a Deflate tile fetches the leading bytes those rows need (estimated with
    headroom), not the whole tile; the pixels still equal GDAL's."""
    path = write_cog(tmp_path / "top.tif", width=512, height=512, block=512)
    srv = make_server()
    sources = sources_of(srv.url("top.tif"))
    g = world_box(40.5, 3.2, 300.2, 30.7)  # rows 3..30 of a 512-row tile
    off, length = _tile0(path)
    srv.reset()
    stats = ReadStats()
    (r,) = read([ReadRequest("r", g, "EPSG:32633", sources)], backend, stats=stats)
    assert isinstance(r, ReadResult) and np.array_equal(r.data, oracle(path, g))
    want = kernel.prefix_length(sources[0].meta.tile_format(), 31, length)
    assert logged_ranges(srv) == [(off, want)] and want < length // 4
    assert (stats.prefix_tiles, stats.prefix_refetches, stats.bytes_fetched) == (1, 0, want)


def test_a_prefix_that_falls_short_fetches_the_rest(tmp_path: Path, make_server: Callable[..., Any],
                                                    backend: DefaultBackend) -> None:
    """Content that is not even (noise in the top rows, zeros below): the rows' share of the compressed bytes
    far exceeds their share of the rows, so the estimated prefix ends early; the rest of the tile comes in
    one more request and the pixels are still exact."""
    data = np.zeros((1, 512, 512), dtype="uint16")
    data[0, :100] = np.random.default_rng(3).integers(0, 65535, (100, 512))
    path = write_cog(tmp_path / "uneven.tif", width=512, height=512, block=512, data=data)
    srv = make_server()
    sources = sources_of(srv.url("uneven.tif"))
    g = world_box(10.5, 40.2, 200.2, 90.7)  # rows 40..90: 18 % of the rows, nearly all of the bytes
    off, length = _tile0(path)
    want = kernel.prefix_length(sources[0].meta.tile_format(), 91, length)
    assert want < length
    srv.reset()
    stats = ReadStats()
    (r,) = read([ReadRequest("r", g, "EPSG:32633", sources)], backend, stats=stats)
    assert isinstance(r, ReadResult) and np.array_equal(r.data, oracle(path, g))
    assert logged_ranges(srv) == [(off, want), (off + want, length - want)]
    assert (stats.prefix_tiles, stats.prefix_refetches, stats.bytes_fetched) == (1, 1, length)


def test_uncompressed_tiles_fetch_exactly_the_needed_rows(tmp_path: Path, make_server: Callable[..., Any],
                                                          backend: DefaultBackend) -> None:
    path = write_cog(tmp_path / "raw.tif", width=512, height=512, block=512, compress="NONE", predictor=1,
                     count=3, interleave="pixel", dtype="uint8")
    srv = make_server()
    sources = sources_of(srv.url("raw.tif"))
    g = world_box(100.5, 20.2, 300.2, 60.7)  # rows 20..60
    off, _length = _tile0(path)
    srv.reset()
    results = read([ReadRequest("r", g, "EPSG:32633", sources)], backend)
    assert isinstance(results[0], ReadResult) and np.array_equal(results[0].data, oracle(path, g))
    assert logged_ranges(srv) == [(off, 61 * 512 * 3)]  # 61 rows of 512 pixel-interleaved RGB samples


def test_a_run_of_tiles_keeps_one_request_with_a_prefix_only_at_its_end(
        tmp_path: Path, make_server: Callable[..., Any], backend: DefaultBackend) -> None:
    """Two back-to-back tiles whose top rows an AOI needs: the first is fetched whole so the pair stays one
    request, and only the second is cut short."""
    path = write_cog(tmp_path / "run.tif", width=1024, height=512, block=512)
    srv = make_server()
    sources = sources_of(srv.url("run.tif"))
    g = world_box(300.5, 5.2, 700.2, 40.7)  # columns across tiles 0 and 1, rows 5..40
    with tifffile.TiffFile(path) as tf:
        offs, counts = tf.pages[0].dataoffsets, tf.pages[0].databytecounts
    assert offs[1] - (offs[0] + counts[0]) <= 64 * 1024
    srv.reset()
    stats = ReadStats()
    (r,) = read([ReadRequest("r", g, "EPSG:32633", sources)], backend, stats=stats)
    assert isinstance(r, ReadResult) and np.array_equal(r.data, oracle(path, g))
    second = kernel.prefix_length(sources[0].meta.tile_format(), 41, int(counts[1]))
    assert second < counts[1]
    assert logged_ranges(srv) == [(int(offs[0]), int(offs[1]) - int(offs[0]) + second)]
    assert stats.prefix_tiles == 1


@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", 0), ("uint16", 70000.0), ("uint16", 1.5), ("int8", -128),
                                               ("float32", float("nan")), ("float32", 0.1), ("float64", -9999.0)])
def test_nodata_valid_is_gdals_dataset_mask(dtype: str, nodata: float) -> None:
    """A pixel is valid when any band differs from nodata compared in the band's dtype (NaN-aware); a nodata
    the type cannot hold matches nothing."""
    from rasterduck.core.gdalmask import nodata_valid

    rng = np.random.default_rng(7)
    data = rng.integers(0, 3, (3, 5, 6)).astype(dtype)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        data[data == 0] = np.float32(nodata) if not np.isnan(nodata) else np.nan
    holdable = dt.kind == "f" or (np.iinfo(dt).min <= nodata <= np.iinfo(dt).max and nodata == int(nodata))
    if not holdable:
        expected = np.ones((5, 6), dtype=bool)
    elif np.isnan(nodata):
        expected = (~np.isnan(data)).any(axis=0)
    else:
        expected = (data != dt.type(nodata)).any(axis=0)
    for bands in (data[:1], data):
        want = expected if bands is data else (
            np.ones((5, 6), bool) if not holdable else
            (~np.isnan(bands[0]) if np.isnan(nodata) else bands[0] != dt.type(nodata)))
        assert np.array_equal(nodata_valid(bands, nodata), want)


def test_a_nodata_the_dtype_cannot_hold_leaves_valid_to_the_aoi(tmp_path: Path, make_server: Callable[..., Any],
                                                               backend: DefaultBackend) -> None:
    """Metadata saying nodata 70000 on uint16 bands (GDAL writes such files; rasterio cannot): no pixel
    matches it, so `valid` is the AOI alone, and pixels outside it hold the clamped fill."""
    import dataclasses

    path = write_cog(tmp_path / "odd_nodata.tif", width=256, height=256, count=2, block=64)
    srv = make_server()
    sources = [dataclasses.replace(s, meta=dataclasses.replace(s.meta, nodata=70000.0))
               for s in sources_of(srv.url(path.name))]
    g = triangle()
    (r,) = read([ReadRequest("odd", g, "EPSG:32633", sources)], backend)
    assert isinstance(r, ReadResult) and r.window is not None
    with rasterio.open(path) as src:
        raw = src.read(window=RioWindow(r.window.col_off, r.window.row_off, r.window.width, r.window.height))
    aoi, _ = aoi_and_dataset_mask(path, g, r.window)
    assert (~aoi).any()
    assert np.array_equal(r.valid, aoi)
    assert np.array_equal(r.data, np.where(aoi, raw, np.uint16(65535)))


@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", 0), ("int16", -1), ("uint8", 7), ("float32", float("nan")),
                                               ("float32", -9999.0)])
def test_valid_is_the_aoi_and_gdals_dataset_mask(tmp_path: Path, make_server: Callable[..., Any],
                                                 backend: DefaultBackend, dtype: str, nodata: float) -> None:
    """Two bands with nodata pixels inside and outside the AOI, in one band or both: `data` is rasterio's
    masked read filled with nodata, `valid` is inside the AOI and any band not nodata (GDAL's dataset mask)."""
    rng = np.random.default_rng(11)
    data = rng.integers(1, 100, (2, 256, 256)).astype(dtype)
    both = rng.random((256, 256)) < 0.2
    one = rng.random((256, 256)) < 0.2
    data[:, both] = nodata
    data[0, one] = nodata
    path = write_cog(tmp_path / f"nd_{dtype}.tif", width=256, height=256, count=2, dtype=dtype, block=64,
                     nodata=nodata, data=data)
    srv = make_server()
    sources = sources_of(srv.url(path.name))
    g = triangle()
    (r,) = read([ReadRequest("nd", g, "EPSG:32633", sources)], backend)
    assert isinstance(r, ReadResult) and r.window is not None
    assert np.array_equal(r.data, oracle(path, g), equal_nan=True)
    aoi, dataset = aoi_and_dataset_mask(path, g, r.window)
    assert aoi.any() and (~aoi).any() and (aoi & ~dataset).any()
    assert np.array_equal(r.valid, aoi & dataset)
