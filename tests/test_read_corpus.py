"""The read kernel over the real-world corpus, through the HTTP test server, against GDAL.

Oracles: the MANIFEST.json window hashes (what rasterio 1.4.4 / GDAL 3.10 read, or tifffile+imagecodecs
for JPEG-YCbCr files), `rasterio.mask.mask(src, [aoi], crop=True, filled=True, nodata=src.nodata or 0,
indexes=band)` for AOIs, `src.dataset_mask` for the valid mask and `rasterio.sample` for points. Every
file of the corpus that our header parser and decoder read is covered (files without georeferencing are
read in pixel space, like GDAL); the excluded files are listed in EXCLUDED with the reason.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyproj
import pytest
import rasterio
import rasterio.mask
import shapely
from rasterio.mask import mask as rio_mask
from rasterio.windows import Window as RioWindow

import rasterduck
from rasterduck import ReadResult
from rasterduck.core.read import BandSource, ReadRequest, band_sources, read_batch
from rasterduck.io.backend import DefaultBackend
from rasterduck.io.loop import run_sync

from ._paths import corpus_dir

pytestmark = [pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore::rasterio.errors.RasterioDeprecationWarning")]

MANIFEST = json.loads((corpus_dir() / "MANIFEST.json").read_text())
FILES: dict[str, Any] = MANIFEST["files"]
# Files we cannot read, and why (everything else must be read and must match).
EXCLUDED = {
    "gdal/cfloat64.tif": "complex float64 samples (SampleFormat 6): no complex dtype support",
    "gdal/cint16.tif": "complex int16 samples (SampleFormat 5): no complex dtype support",
    "rioxarray/cint16.tif": "complex int16 samples (SampleFormat 5): no complex dtype support",
}
YCBCR_JPEG = {"rasterio/cogeo.tif", "rasterio/goes.tif", "gdal/ycbcr_with_mask.tif",
              "rio-tiler/cog_hirise_mars.tif", "cogeotiff/be_cog.tiff"}
# Largest |ours - GDAL| seen on the manifest windows of the YCbCr JPEG files (libjpeg in GDAL upsamples
# chroma differently from imagecodecs); the README reports up to 119 at sharp colour edges of be_cog.
YCBCR_MAX_DIFF = 128


@dataclass
class Record:
    key: str  # manifest key, e.g. "gdal/byte.tif"
    sources: list[BandSource]
    crs: str | None


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"))).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(http_server: Any) -> dict[str, Record]:
    """One collection over every corpus file (served over HTTP); records by manifest key."""
    base = http_server.url("geotiff/")
    coll = rasterduck.build_collection([base + k for k in FILES])
    out: dict[str, Record] = {}
    for acc in coll.iterate_rasters():
        bands = sorted(acc.info.band_metadata, key=lambda b: int(b[1:]))
        if not bands:
            continue
        key = str(acc.info.assets[bands[0]]["href"])[len(base):]
        out[key] = Record(key, band_sources(acc, bands), acc.info.crs)
    return out


@pytest.fixture(scope="module")
def backend() -> Iterator[DefaultBackend]:
    be = DefaultBackend()
    yield be
    run_sync(be.close())


def _read(reqs: list[ReadRequest], backend: DefaultBackend) -> list[ReadResult | BaseException | None]:
    return run_sync(read_batch(reqs, backend))


def test_every_supported_file_is_read(corpus: dict[str, Record]) -> None:
    assert set(FILES) - set(corpus) == set(EXCLUDED)


def test_manifest_windows_equal_gdal(corpus: dict[str, Record], backend: DefaultBackend, server: Any) -> None:
    """All three windows of every readable file, all bands, in one batch: hashes equal the manifest."""
    reqs, keys = [], []
    for key, rec in corpus.items():
        for i, w in enumerate(FILES[key]["windows"]):
            reqs.append(ReadRequest(key, None, None, rec.sources, window=tuple(w["window"])))
            keys.append((key, i))
    results = _read(reqs, backend)
    assert server.requests > 0 and all(r.range is not None for r in server.log)  # ranges only, no header reads
    bad = []
    for (key, i), r in zip(keys, results, strict=True):
        entry = FILES[key]
        win = entry["windows"][i]
        assert isinstance(r, ReadResult), (key, r)
        data = r.data.astype(entry["full"]["read_dtype"])  # float16 is hashed as float32 (GDAL's read type)
        assert list(data.shape) == win["shape"], key
        expected = entry["tifffile_check"]["window_sha256"][i] if key in YCBCR_JPEG else win["sha256"]
        if _sha(data) != expected:
            bad.append((key, win["kind"]))
        if win["kind"] == "single_pixel" and key not in YCBCR_JPEG:
            assert np.allclose(data.ravel(), np.asarray(win["values"], dtype=float), equal_nan=True), key
    assert not bad


def test_ycbcr_jpeg_difference_from_gdal(corpus: dict[str, Record], backend: DefaultBackend) -> None:
    """JPEG YCbCr files equal tifffile exactly (above); their distance from GDAL's libjpeg decode is bounded."""
    reqs, refs = [], []
    for key in sorted(YCBCR_JPEG):
        with rasterio.open(corpus_dir() / key) as src:
            for w in FILES[key]["windows"]:
                reqs.append(ReadRequest(key, None, None, corpus[key].sources, window=tuple(w["window"])))
                refs.append(src.read(window=RioWindow(*w["window"])))
    worst: dict[str, int] = {}
    for req, r, ref in zip(reqs, _read(reqs, backend), refs, strict=True):
        assert isinstance(r, ReadResult)
        diff = int(np.abs(r.data.astype(np.int16) - ref.astype(np.int16)).max())
        worst[req.record_id] = max(worst.get(req.record_id, 0), diff)
    print("max |ours - GDAL| per YCbCr JPEG file:", worst)
    assert max(worst.values()) <= YCBCR_MAX_DIFF
    assert max(worst.values()) > 0  # they do differ: the tifffile hashes above are the exact oracle


# ------------------------------------------------------------------------------------------------
# AOIs


def _world(t: tuple[float, ...], cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    a, b, c, d, e, f = t[:6]
    return np.column_stack([a * cols + b * rows + c, d * cols + e * rows + f])


def _star(rng: np.random.Generator, cx: float, cy: float, r: float, n: int) -> np.ndarray:
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.35, 1.0, n)
    pts = np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)])
    snap = rng.random(n) < 0.4  # vertices on pixel centres and edges: GDAL's tie rules decide
    pts[snap] = np.round(pts[snap] * 2) / 2
    return pts


def pixel_aois(rng: np.random.Generator, w: int, h: int) -> list[tuple[str, shapely.Geometry]]:
    """AOIs in pixel coordinates (col, row): inside, holes, multipart, across edges, outside, sub-pixel.

    Big rasters get AOIs of at most ~90 pixels, in their top-left 300 x 300 pixels and at the far corner.
    """
    size = min(max(w, h), 90)
    r = max(size / 4.0, 1.5)
    cw, ch = min(w, 300), min(h, 300)
    cx, cy = rng.uniform(0.2 * cw, 0.8 * cw), rng.uniform(0.2 * ch, 0.8 * ch)
    aois: list[tuple[str, shapely.Geometry]] = []
    star = shapely.Polygon(_star(rng, cx, cy, r, 9)).buffer(0)
    aois.append(("star", star))
    outer = shapely.box(cx - r, cy - r, cx + r, cy + r)
    hole = shapely.Polygon(_star(rng, cx, cy, r * 0.5, 7)).buffer(0)
    aois.append(("hole", outer.difference(hole)))
    p2 = shapely.Polygon(_star(rng, min(cx + 2.2 * r, cw - 1.0), cy, r * 0.6, 6)).buffer(0)
    aois.append(("multi", shapely.MultiPolygon([g for g in (shapely.Polygon(_star(rng, cx, cy, r * 0.6, 6)).buffer(0), p2)
                                                if g.geom_type == "Polygon"])))
    aois.append(("edge", shapely.Polygon(_star(rng, w - r * 0.3, h - r * 0.2, r, 8)).buffer(0)))
    aois.append(("corner", shapely.box(-3.25, -2.5, min(r, w / 2) + 0.5, min(r, h / 2))))
    aois.append(("centres", shapely.Polygon([(1.5, 0.5), (min(w, 9) - 0.5, 1.5), (min(w, 9) - 1.5, min(h, 9) - 0.5),
                                             (0.5, min(h, 7) - 0.5)])))  # edges through pixel centres
    aois.append(("sliver", shapely.box(cx + 0.1, cy + 0.1, cx + 0.4, cy + 0.45)))
    aois.append(("outside", shapely.box(w + 5, h + 5, w + 5 + r, h + 5 + r)))
    return [(name, g) for name, g in aois if not g.is_empty]


def to_world(geom: shapely.Geometry, t: tuple[float, ...]) -> shapely.Geometry:
    return shapely.transform(geom, lambda xy: _world(t, xy[:, 0], xy[:, 1]))


@dataclass
class Case:
    key: str
    name: str
    aoi: shapely.Geometry  # as sent to the reader
    aoi_crs: str | None
    raster_aoi: shapely.Geometry  # the same AOI in the raster's CRS, moved with pyproj independently


_CASES: list[Case] = []


def _cases(corpus: dict[str, Record]) -> list[Case]:
    """AOI cases of every readable file (built once per module run)."""
    if not _CASES:
        _CASES.extend(_make_cases(corpus))
    return _CASES


def _make_cases(corpus: dict[str, Record]) -> list[Case]:
    cases = []
    for key in sorted(corpus):
        rec = corpus[key]
        meta = rec.sources[0].meta
        seed = zlib.crc32(key.encode())
        rng = np.random.default_rng(seed)
        w, h = meta.image_width, meta.image_height
        # 8 AOIs per file; the big sparse file only needs a few pixels
        for name, pix in pixel_aois(rng, w, h):
            world = to_world(pix, meta.affine)
            cases.append(Case(key, name, world, rec.crs, world))
            if rec.crs is None or name not in ("star", "hole", "edge"):
                continue
            for other in ("EPSG:4326", "EPSG:3857"):
                try:
                    there = shapely.transform(world, _mover(rec.crs, other), interleaved=False)
                    back = shapely.transform(there, _mover(other, rec.crs), interleaved=False)
                except pyproj.exceptions.ProjError:
                    continue
                if np.isfinite(shapely.get_coordinates(there)).all() and np.isfinite(shapely.get_coordinates(back)).all():
                    cases.append(Case(key, f"{name}@{other}", there, other, back))
    return cases


_MOVERS: dict[tuple[str, str], Any] = {}


def _mover(src: str, dst: str) -> Any:
    if (src, dst) not in _MOVERS:
        try:
            tr = pyproj.Transformer.from_crs(src, dst, always_xy=True)
        except pyproj.exceptions.ProjError:
            tr = None
        _MOVERS[(src, dst)] = tr
    tr = _MOVERS[(src, dst)]
    if tr is None:
        raise pyproj.exceptions.ProjError(f"no transformation {src} -> {dst}")
    return lambda x, y: tr.transform(x, y)


_TIFFFILE: dict[str, np.ndarray] = {}


def _tifffile_pixels(key: str) -> np.ndarray:
    """IFD 0 decoded by tifffile + imagecodecs as (bands, rows, cols): the exact oracle of YCbCr JPEG files."""
    if key not in _TIFFFILE:
        import tifffile

        arr = tifffile.imread(corpus_dir() / key, key=0)
        _TIFFFILE[key] = np.moveaxis(arr, -1, 0) if arr.ndim == 3 else arr[None]
    return _TIFFFILE[key]


_OPEN: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_datasets() -> Iterator[None]:
    yield
    for ds in _OPEN.values():
        ds.close()
    _OPEN.clear()


def _dataset(key: str) -> Any:
    """The corpus file opened with rasterio, once per module run."""
    if key not in _OPEN:
        _OPEN[key] = rasterio.open(corpus_dir() / key)
    return _OPEN[key]


def _oracle(key: str, geom: shapely.Geometry, all_touched: bool) -> np.ndarray | None:
    """rasterio.mask.mask band by band (None when the AOI misses the raster).

    For JPEG-YCbCr files GDAL's pixels come from libjpeg's chroma upsampling, which imagecodecs does not
    reproduce: there the window and the mask (AOI and GDAL's mask band) are rasterio's, the pixel values
    tifffile's.
    """
    src = _dataset(key)
    nodata = src.nodata or 0
    # band by band; a 64-band file in one call (rasterio masks each band by its own mask band either way)
    indexes: list[Any] = list(src.indexes) if src.count <= 4 else [list(src.indexes)]
    try:
        parts = [rio_mask(src, [geom], crop=True, all_touched=all_touched, filled=key not in YCBCR_JPEG,
                          nodata=nodata, indexes=i)[0] for i in indexes]
        if key in YCBCR_JPEG:
            _, win = rasterio.mask.raster_geometry_mask(src, [geom], crop=True, all_touched=all_touched)[1:]
    except ValueError as exc:  # "Input shapes do not overlap raster."
        assert "overlap" in str(exc)
        return None
    stacked = np.ma.stack(parts) if src.count <= 4 else parts[0]
    if key not in YCBCR_JPEG:
        return np.asarray(stacked)
    r0, c0 = int(win.row_off), int(win.col_off)
    block = _tifffile_pixels(key)[:, r0 : r0 + int(win.height), c0 : c0 + int(win.width)]
    holes = np.ma.getmaskarray(stacked)
    return np.where(holes, np.asarray(nodata, block.dtype), block)


@pytest.mark.parametrize("all_touched", [False, True])
def test_masked_reads_equal_rasterio_mask(corpus: dict[str, Record], backend: DefaultBackend,
                                          all_touched: bool) -> None:
    """Random AOIs (holes, multipart, edges, outside, sub-pixel, several CRSs) on every readable file,
    read in one batch: data equal rasterio.mask.mask pixel for pixel (NaN too) and in shape."""
    cases = _cases(corpus)
    reqs = [ReadRequest(c.key, c.aoi, c.aoi_crs, corpus[c.key].sources, all_touched=all_touched) for c in cases]
    results = _read(reqs, backend)
    bad, seen_none, seen_data = [], 0, 0
    for c, r in zip(cases, results, strict=True):
        ref = _oracle(c.key, c.raster_aoi, all_touched)
        if ref is None:
            assert r is None, (c.key, c.name, r)
            seen_none += 1
            continue
        assert isinstance(r, ReadResult), (c.key, c.name, r)
        seen_data += 1
        ours = r.data.astype(ref.dtype)
        if ours.shape != ref.shape or not np.array_equal(ours, ref, equal_nan=ref.dtype.kind == "f"):
            bad.append((c.key, c.name, ours.shape, ref.shape))
    assert not bad, str(sorted({(b[0], b[1].split("@")[0]) for b in bad}))
    assert seen_none >= len(corpus) and seen_data >= 5 * len(corpus)


def test_valid_mask_equals_gdal_dataset_mask(corpus: dict[str, Record], backend: DefaultBackend) -> None:
    """valid = AOI mask & GDAL's dataset mask (nodata of any band, internal mask or alpha) & not sparse."""
    reqs, cases = [], []
    for c in _cases(corpus):
        if c.name in ("star", "edge") and c.aoi_crs == corpus[c.key].crs:
            reqs.append(ReadRequest(c.key, c.aoi, c.aoi_crs, corpus[c.key].sources))
            cases.append(c)
    checked = 0
    for c, r in zip(cases, _read(reqs, backend), strict=True):
        if r is None:
            continue
        assert isinstance(r, ReadResult)
        assert r.window is not None
        with rasterio.open(corpus_dir() / c.key) as src:
            ds = src.dataset_mask(window=RioWindow(r.window.col_off, r.window.row_off, r.window.width,
                                                   r.window.height)) != 0
            aoi = ~rio_mask(src, [c.raster_aoi], crop=True, filled=False, indexes=1)[0].mask
        expected = ds & aoi
        if FILES[c.key]["summary"]["sparse_blocks_ifd0"]:
            # sparse tiles are never valid (GDAL calls them valid when the file has no mask band)
            w = r.window
            expected &= ~_sparse_pixels(c.key)[w.row_off : w.row_stop, w.col_off : w.col_stop]
        assert np.array_equal(r.valid, expected), (c.key, c.name)
        checked += 1
    assert checked >= len(corpus)


def _sparse_pixels(key: str) -> np.ndarray:
    """(rows, cols) True inside a tile or strip of IFD 0 that has no data (offset or byte count 0), per tifffile."""
    import tifffile

    with tifffile.TiffFile(corpus_dir() / key) as tf:
        page = tf.pages[0]
        h, w = page.imagelength, page.imagewidth
        th, tw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, w)
        offsets, counts = np.asarray(page.dataoffsets), np.asarray(page.databytecounts)
    across, down = -(-w // tw), -(-h // th)
    empty = ((offsets == 0) | (counts == 0)).reshape(-1, down, across).any(axis=0)  # any plane
    return np.repeat(np.repeat(empty, th, axis=0), tw, axis=1)[:h, :w]


def test_points_equal_rasterio_sample(corpus: dict[str, Record], backend: DefaultBackend) -> None:
    """Points (inside, on pixel edges, outside) return the pixel under them, like rasterio.sample."""
    reqs, expect = [], []
    for key in sorted(corpus):
        rec = corpus[key]
        meta = rec.sources[0].meta
        rng = np.random.default_rng(zlib.crc32(key.encode()) + 1)
        w, h = meta.image_width, meta.image_height
        cols = np.concatenate([rng.uniform(0, w, 6), np.floor(rng.uniform(0, w, 3)), [w + 3.5, -2.0]])
        rows = np.concatenate([rng.uniform(0, h, 6), np.floor(rng.uniform(0, h, 3)), [h / 2, h + 7.0]])
        xy = _world(meta.affine, cols, rows)
        with rasterio.open(corpus_dir() / key) as src:
            # one point per call: rasterio's batched rowcol (a BLAS matrix product) can round a point lying
            # exactly on a pixel edge of a rotated grid differently from the same point sampled alone
            samples = [next(src.sample([tuple(p)])) for p in xy]
            inside = [(int(rr), int(cc)) for rr, cc in (src.index(x, y) for x, y in xy)]
        for (x, y), value, (rr, cc) in zip(xy, samples, inside, strict=True):
            reqs.append(ReadRequest(key, shapely.Point(x, y), rec.crs, rec.sources))
            if key in YCBCR_JPEG and 0 <= rr < h and 0 <= cc < w:
                value = _tifffile_pixels(key)[:, rr, cc]
            expect.append(value if (0 <= rr < h and 0 <= cc < w) else None)
    results = _read(reqs, backend)
    for req, r, value in zip(reqs, results, expect, strict=True):
        if value is None:
            assert r is None, req.record_id
            continue
        assert isinstance(r, ReadResult) and r.data.shape[1:] == (1, 1), (req.record_id, r)
        ours = r.data[:, 0, 0].astype(value.dtype)
        assert np.array_equal(ours, value, equal_nan=value.dtype.kind == "f"), (req.record_id, ours, value, r.window, req.geometry)
