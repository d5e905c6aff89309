"""The tile decoder against independent oracles: tifffile+imagecodecs, GDAL (rasterio) and the corpus manifest."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import rasterio
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from rasterduck.errors import DecodeError
from rasterduck.tiff.decode import decode_tile, supported_compressions
from rasterduck.tiff.model import TileFormat

from ._paths import REPO_ROOT, corpus_dir
from ._tiffgen import SPECS, Segment, Spec, segments, tile_format, write

pytestmark = [
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

MANIFEST = json.loads((corpus_dir() / "MANIFEST.json").read_text())["files"]
# 20480x20480x4 and every block sparse: nothing to decode, too big to assemble (see corpus README)
TOO_BIG = {"cogeotiff/sparse.tiff"}
CORPUS = sorted(set(MANIFEST) - TOO_BIG)


def _bytes_equal(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Exact equality, bit for bit (NaN payloads included), with a useful message."""
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    a, b = np.ascontiguousarray(ours), np.ascontiguousarray(ref)
    if a.tobytes() != b.tobytes():
        differ = a.view(np.uint8) != b.view(np.uint8)
        raise AssertionError(f"{what}: {int(differ.sum())} of {differ.size} bytes differ")


def _assemble(tf: tifffile.TiffFile) -> tuple[np.ndarray, int]:
    """Decode every IFD-0 block with decode_tile into a (bands, rows, cols) array; also count them."""
    page = tf.pages[0]
    fmt = tile_format(page, tf.byteorder)
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    out = np.zeros((planes, page.imagelength, page.imagewidth, fmt.samples), np.dtype(fmt.dtype).newbyteorder("="))
    decoded = 0
    for seg in segments(tf):
        if not seg.data:
            continue  # sparse: GDAL and tifffile read zeros
        tile = decode_tile(seg.data, fmt, rows=seg.rows)
        assert tile.shape == (seg.rows, fmt.tile_width, fmt.samples)
        assert tile.dtype.isnative
        out[seg.plane, seg.row0 : seg.row0 + seg.rows, seg.col0 : seg.col0 + seg.cols] = tile[:, : seg.cols]
        decoded += 1
    return np.moveaxis(out, -1, 1).reshape(-1, page.imagelength, page.imagewidth), decoded


def _tifffile_bands(page: tifffile.TiffPage) -> np.ndarray:
    arr = page.asarray()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if page.samplesperpixel == 1 or page.planarconfig == 2:
        return arr.reshape(-1, page.imagelength, page.imagewidth)
    return np.moveaxis(arr, -1, 0)


def _first_block(tf: tifffile.TiffFile) -> Segment:
    return next(seg for seg in segments(tf) if seg.data)


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_file_decodes_like_tifffile_and_manifest(name: str) -> None:
    entry = MANIFEST[name]
    with tifffile.TiffFile(corpus_dir() / name) as tf:
        page = tf.pages[0]
        if np.dtype(entry["tiff"]["numpy_dtype"]).kind == "c":
            seg = _first_block(tf)
            with pytest.raises(DecodeError, match="complex sample type"):
                decode_tile(seg.data, tile_format(page, tf.byteorder), rows=seg.rows)
            return
        ours, decoded = _assemble(tf)
        _bytes_equal(ours, _tifffile_bands(page), f"{name} vs tifffile")
        stored = len(page.dataoffsets) - entry["summary"]["sparse_blocks_ifd0"]
        assert decoded == stored, f"{name}: decoded {decoded} blocks, the file stores {stored}"
    read_dtype = np.dtype(entry["summary"]["rasterio_dtype"]).newbyteorder("<")
    digest = hashlib.sha256(np.ascontiguousarray(ours.astype(read_dtype)).tobytes()).hexdigest()
    assert digest == entry["tifffile_check"]["all_bands_sha256"], f"{name}: manifest hash differs"


# ---------------------------------------------------------------- generated files (rasterio / tifffile)


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("decode")
    return {spec.name: write(spec, folder) for spec in SPECS}


GDAL_DIFFS: dict[str, float] = {}


def _check_declared(spec: Spec, tf: tifffile.TiffFile) -> None:
    """The writer really produced what the spec is about (else the test would test something else)."""
    page = tf.pages[0]
    facts = {
        "compression": int(page.compression),
        "predictor": int(page.predictor),
        "byteorder": tf.byteorder,
        "dtype": str(page.dtype) if page.bitspersample != 1 else "bool",
        "planar": int(page.planarconfig),
        "samples": page.samplesperpixel,
        "tiled": page.is_tiled,
        "bits": page.bitspersample,
        "photometric": int(page.photometric),
        "lerc": tuple(page.tags["LercParameters"].value) if "LercParameters" in page.tags else None,
        "extrasamples": tuple(int(v) for v in page.extrasamples),
    }
    for key, want in spec.expect.items():
        assert facts[key] == want, f"{spec.name}: file has {key}={facts[key]!r}, spec wants {want!r}"


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_generated_tiles_match_oracle(spec: Spec, generated: dict[str, Path]) -> None:
    path = generated[spec.name]
    with tifffile.TiffFile(path) as tf:
        _check_declared(spec, tf)
        page = tf.pages[0]
        fmt = tile_format(page, tf.byteorder)
        # tifffile cannot read every file GDAL writes (LERC with an alpha mask): only where it is the oracle
        reference = _tifffile_bands(page) if spec.oracle != "gdal" else None
        blocks = [seg for seg in segments(tf) if seg.data]
    assert blocks
    if page.planarconfig == 2:
        assert spec.oracle == "gdal"
    with rasterio.open(path) if spec.oracle != "tifffile" else _null() as ds:
        worst = 0.0
        for seg in blocks:
            tile = decode_tile(seg.data, fmt, rows=seg.rows)
            ours = np.moveaxis(tile[:, : seg.cols], -1, 0)
            bands = slice(seg.plane, seg.plane + 1) if page.planarconfig == 2 else slice(None)
            where = f"{spec.name} block {seg.index}"
            window = Window(seg.col0, seg.row0, seg.cols, seg.rows)
            if spec.oracle == "tifffile":
                assert reference is not None
                ref = reference[bands, seg.row0 : seg.row0 + seg.rows, seg.col0 : seg.col0 + seg.cols]
                _bytes_equal(ours, ref, where)
                continue
            gdal = ds.read(indexes=None if page.planarconfig == 1 else seg.plane + 1, window=window)
            gdal = gdal.reshape(-1, seg.rows, seg.cols)
            if ours.dtype == np.float16:
                ours = ours.astype(np.float32)  # GDAL 3.10 reads half floats as float32
            if spec.oracle == "gdal":
                _bytes_equal(ours, gdal, where)
                continue
            assert reference is not None
            ref = reference[bands, seg.row0 : seg.row0 + seg.rows, seg.col0 : seg.col0 + seg.cols]
            _bytes_equal(ours, ref, f"{where} vs tifffile")
            worst = max(worst, float(np.abs(ours.astype(np.int32) - gdal.astype(np.int32)).max()))
        if spec.oracle == "lossy":
            GDAL_DIFFS[spec.name] = worst
            print(f"{spec.name}: max |ours - GDAL| = {worst}")
            assert worst <= spec.max_gdal_diff


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_packbits_ignores_predictor_like_gdal(tmp_path: Path) -> None:
    """libtiff runs no predictor inside PackBits; tifffile does. GDAL is the reference here."""
    data = np.random.default_rng(5).integers(0, 1000, (64, 64), dtype=np.uint16)
    path = tmp_path / "packbits_pred2.tif"
    tifffile.imwrite(path, data, compression="packbits", predictor=2, tile=(32, 32))
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].predictor == 2
        ours, _ = _assemble(tf)
    with rasterio.open(path) as ds:
        _bytes_equal(ours, ds.read(), "packbits+predictor vs GDAL")
    assert not np.array_equal(ours[0], data)  # the predictor really was left alone


def test_jpeg_in_rgb_photometric_is_passed_through_like_gdal(tmp_path: Path) -> None:
    """libtiff converts colour only for YCbCr photometric; a JFIF (YCbCr-coded) stream in an RGB-photometric
    TIFF comes out raw in GDAL. tifffile converts it; GDAL is the reference."""
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[10:20] = 200, 30, 255
    tiles = [imagecodecs.jpeg8_encode(rgb[y : y + 32, x : x + 32], level=95, subsampling="444")
             for y in (0, 32) for x in (0, 32)]
    path = tmp_path / "jfif_in_rgb.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(iter(tiles), shape=(64, 64, 3), dtype="uint8", photometric="rgb", compression="jpeg",
                     tile=(32, 32), subsampling=(1, 1))
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[0].tags[262]  # PhotometricInterpretation
        order = "little" if tf.byteorder == "<" else "big"
    raw = bytearray(path.read_bytes())
    raw[tag.valueoffset : tag.valueoffset + 2] = (2).to_bytes(2, order)  # tifffile wrote YCbCr; say RGB
    path.write_bytes(bytes(raw))
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].photometric == 2
        ours, _ = _assemble(tf)
    with rasterio.open(path) as ds:
        _bytes_equal(ours, ds.read(), "JFIF stream in RGB photometric vs GDAL")
    assert np.abs(ours[0].astype(int) - 200).max() > 50  # really not converted back to RGB


# ---------------------------------------------------------------- partial decoding


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_partial_decode_is_prefix_of_full(spec: Spec, generated: dict[str, Path]) -> None:
    with tifffile.TiffFile(generated[spec.name]) as tf:
        fmt = tile_format(tf.pages[0], tf.byteorder)
        seg = _first_block(tf)
    full = decode_tile(seg.data, fmt, rows=seg.rows)
    for k in sorted({1, max(1, seg.rows // 4), max(1, seg.rows // 2), seg.rows}):
        part = decode_tile(seg.data, fmt, rows=k)
        _bytes_equal(part, full[:k], f"{spec.name} rows={k}")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_region_decode_is_slice_of_full(spec: Spec, generated: dict[str, Path]) -> None:
    """Narrowed to rows first_row.. and the leading cols columns, a decode equals that slice of the full
    one (every codec, predictor, dtype, byte order and bit depth the generator writes)."""
    with tifffile.TiffFile(generated[spec.name]) as tf:
        fmt = tile_format(tf.pages[0], tf.byteorder)
        seg = _first_block(tf)
    full = decode_tile(seg.data, fmt, rows=seg.rows)
    w = fmt.tile_width
    for k in sorted({1, max(1, seg.rows // 2), seg.rows}):
        for first in sorted({0, k // 3, k - 1}):
            for cols in sorted({1, max(1, w // 3), w - 1, w} - {0}):
                part = decode_tile(seg.data, fmt, rows=k, first_row=first, cols=cols)
                _bytes_equal(part, full[first:k, :cols], f"{spec.name} rows {first}..{k} cols ..{cols}")
    for first, cols in ((seg.rows, w), (0, 0), (0, w + 1), (-1, w)):
        with pytest.raises(DecodeError, match="outside"):
            decode_tile(seg.data, fmt, rows=seg.rows, first_row=first, cols=cols)


def test_partial_decode_large_tile_every_byte_codec() -> None:
    """A 512x512 uint16 tile through each byte codec and predictor: prefixes equal the full decode."""
    rng = np.random.default_rng(3)
    img = np.cumsum(rng.integers(-20, 21, (512, 512)), axis=1).astype(np.uint16)
    img_f = (np.cumsum(rng.normal(0, 1, (512, 512)), axis=1)).astype(np.float32)
    pred2 = imagecodecs.delta_encode(img.reshape(512, 512, 1), axis=-2).tobytes()
    pred3 = imagecodecs.floatpred_encode(img_f.reshape(512, 512, 1), axis=-2).tobytes()
    cases = {
        (8, 2, "<u2"): zlib.compress(pred2),
        (50000, 2, "<u2"): imagecodecs.zstd_encode(pred2),
        (5, 2, "<u2"): imagecodecs.lzw_encode(pred2),
        (34925, 2, "<u2"): imagecodecs.lzma_encode(pred2),
        (8, 3, "<f4"): zlib.compress(pred3),
        (50000, 3, "<f4"): imagecodecs.zstd_encode(pred3),
        (32773, 1, "<u2"): imagecodecs.packbits_encode(img.tobytes()),
        (1, 1, "<u2"): img.tobytes(),
    }
    for (comp, pred, dtype), data in cases.items():
        fmt = TileFormat(comp, pred, dtype, 512, 512, 1)
        expect = img_f if dtype == "<f4" else img
        full = decode_tile(data, fmt)
        _bytes_equal(full[..., 0], expect, f"compression {comp} full")
        for k in (1, 64, 170, 256, 511):
            _bytes_equal(decode_tile(data, fmt, rows=k), full[:k], f"compression {comp} rows={k}")
            for first, cols in ((0, 1), (k // 2, 300), (k - 1, 512)):
                _bytes_equal(decode_tile(data, fmt, rows=k, first_row=first, cols=cols), full[first:k, :cols],
                             f"compression {comp} rows {first}..{k} cols ..{cols}")


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_deflate_paths_agree(inflater: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deflate with ISA-L (partial reads) and without it (zlib prefixes, libdeflate whole tiles): every
    prefix equals the full decode, a cut stream decodes short and a corrupt one raises DecodeError."""
    import rasterduck.tiff.decode as dec

    if inflater == "isal":
        assert dec._isal_zlib is not None, "python-isal is a dependency: it must be importable"
    else:
        monkeypatch.setattr(dec, "_isal_zlib", None)
    rng = np.random.default_rng(11)
    img = np.cumsum(rng.integers(-30, 31, (256, 384)), axis=1).astype(np.uint16)
    data = zlib.compress(imagecodecs.delta_encode(img.reshape(256, 384, 1), axis=-2).tobytes(), 6)
    fmt = TileFormat(8, 2, "<u2", 384, 256, 1)
    _bytes_equal(decode_tile(data, fmt)[..., 0], img, f"{inflater} full")
    for k in (1, 37, 85, 86, 128, 200, 255, 256):
        _bytes_equal(decode_tile(memoryview(data), fmt, rows=k)[..., 0], img[:k], f"{inflater} rows={k}")
    with pytest.raises(DecodeError):
        decode_tile(data[: len(data) // 3], fmt, rows=200)  # the stream ends before row 200
    bad = bytearray(data)
    bad[2:40] = b"\xff" * 38
    with pytest.raises(DecodeError):
        decode_tile(bytes(bad), fmt, rows=100)


# ---------------------------------------------------------------- short, oversize, corrupt


FMT_U8 = TileFormat(8, 1, "|u1", 256, 256, 1)


def _tile_u8() -> np.ndarray:
    rng = np.random.default_rng(9)
    return np.cumsum(rng.integers(0, 3, (256, 256)), axis=1).astype(np.uint8)


BYTE_ENCODERS = {
    1: lambda b: b,
    5: imagecodecs.lzw_encode,
    8: zlib.compress,
    32946: zlib.compress,
    32773: imagecodecs.packbits_encode,
    34925: imagecodecs.lzma_encode,
    50000: imagecodecs.zstd_encode,
}


@pytest.mark.parametrize("comp", sorted(BYTE_ENCODERS))
def test_short_stream_is_error_only_when_requested_rows_are_missing(comp: int) -> None:
    """GDAL reads a block whose stream covers the rows inside the image; fewer rows is an error."""
    img = _tile_u8()
    fmt = TileFormat(comp, 1, "|u1", 256, 256, 1)
    data = BYTE_ENCODERS[comp](img[:100].tobytes() + img[100, :17].tobytes())  # 100 rows and a bit
    _bytes_equal(decode_tile(data, fmt, rows=100)[..., 0], img[:100], f"{comp} rows=100")
    for rows in (101, 256, None):
        with pytest.raises(DecodeError, match="rows requested need"):
            decode_tile(data, fmt, rows=rows)


@pytest.mark.parametrize("comp", sorted(BYTE_ENCODERS))
def test_oversize_stream_is_truncated_like_gdal(comp: int) -> None:
    img = _tile_u8()
    fmt = TileFormat(comp, 1, "|u1", 256, 256, 1)
    data = BYTE_ENCODERS[comp](img.tobytes() + bytes(range(256)) * 300)
    _bytes_equal(decode_tile(data, fmt)[..., 0], img, f"{comp} oversize")
    _bytes_equal(decode_tile(data, fmt, rows=3)[..., 0], img[:3], f"{comp} oversize rows=3")


def test_gdal_agrees_on_short_and_oversize_blocks(tmp_path: Path) -> None:
    """The rule above, checked against GDAL itself on a file whose tiles were rewritten."""
    img = np.random.default_rng(2).integers(0, 255, (50, 40), dtype=np.uint8)
    src = tmp_path / "src.tif"
    with rasterio.open(src, "w", driver="GTiff", width=40, height=50, count=1, dtype="uint8", compress="DEFLATE",
                       tiled=True, blockxsize=16, blockysize=32) as ds:
        ds.write(img, 1)
    bottom = np.zeros((32, 16), np.uint8)
    bottom[:18] = img[32:50, :16]
    cases = {
        "in_image_rows": (zlib.compress(bottom[:18].tobytes()), True),  # edge tile, only in-image rows
        "oversize": (zlib.compress(bottom.tobytes() + bytes(5000)), True),
        "short": (zlib.compress(bottom[:10].tobytes()), False),
    }
    fmt = TileFormat(8, 1, "|u1", 16, 32, 1)
    for label, (stream, gdal_ok) in cases.items():
        path = tmp_path / f"{label}.tif"
        _replace_block(src, path, 3, stream)  # tile row 1, col 0
        with rasterio.open(path) as ds:
            try:
                got = ds.read(1, window=Window(0, 32, 16, 18))
            except rasterio.errors.RasterioIOError:
                got = None
        assert (got is not None) == gdal_ok, label
        if gdal_ok:
            _bytes_equal(decode_tile(stream, fmt, rows=18)[:, :, 0], got, label)
        else:
            with pytest.raises(DecodeError):
                decode_tile(stream, fmt, rows=18)


def _replace_block(src: Path, dst: Path, index: int, stream: bytes) -> None:
    """Copy a TIFF, append a new stream for one block and point its offset/bytecount at it."""
    raw = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tf:
        page = tf.pages[0]
        order = tf.byteorder
        tags = [page.tags["TileOffsets"], page.tags["TileByteCounts"]]
    values = [len(raw), len(stream)]
    raw += stream
    for tag, value in zip(tags, values, strict=True):
        size = {3: 2, 4: 4, 16: 8}[int(tag.dtype)]  # SHORT, LONG, LONG8
        pos = tag.valueoffset + index * size
        raw[pos : pos + size] = value.to_bytes(size, "little" if order == "<" else "big")
    dst.write_bytes(bytes(raw))


def _valid_streams() -> dict[str, tuple[bytes, TileFormat]]:
    """One small valid stream per codec, built with imagecodecs encoders."""
    rng = np.random.default_rng(4)
    u16 = np.cumsum(rng.integers(-5, 6, (32, 32, 1)), axis=1).astype(np.uint16)
    rgb = np.clip(np.cumsum(rng.integers(-9, 10, (32, 32, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    f32 = rng.normal(0, 10, (32, 32)).astype(np.float32)
    pred2 = imagecodecs.delta_encode(u16, axis=-2).tobytes()
    lerc = imagecodecs.lerc_encode(f32, level=0.0)
    streams = {
        "none": (u16.tobytes(), TileFormat(1, 1, "<u2", 32, 32, 1)),
        "lzw": (imagecodecs.lzw_encode(pred2), TileFormat(5, 2, "<u2", 32, 32, 1)),
        "deflate": (zlib.compress(pred2), TileFormat(8, 2, "<u2", 32, 32, 1)),
        "packbits": (imagecodecs.packbits_encode(u16.tobytes()), TileFormat(32773, 1, "<u2", 32, 32, 1)),
        "lzma": (imagecodecs.lzma_encode(pred2), TileFormat(34925, 2, "<u2", 32, 32, 1)),
        "zstd": (imagecodecs.zstd_encode(pred2), TileFormat(50000, 2, "<u2", 32, 32, 1)),
        "jpeg": (imagecodecs.jpeg8_encode(rgb, level=90), TileFormat(7, 1, "|u1", 32, 32, 3, photometric=6)),
        "webp": (imagecodecs.webp_encode(rgb, level=80), TileFormat(50001, 1, "|u1", 32, 32, 3, photometric=2)),
        "lerc": (lerc, TileFormat(34887, 1, "<f4", 32, 32, 1, lerc_parameters=(4, 0))),
        "lerc_deflate": (zlib.compress(lerc), TileFormat(34887, 1, "<f4", 32, 32, 1, lerc_parameters=(4, 1))),
        "lerc_zstd": (imagecodecs.zstd_encode(lerc), TileFormat(34887, 1, "<f4", 32, 32, 1, lerc_parameters=(4, 2))),
    }
    if 50002 in supported_compressions():
        streams["jpegxl"] = (imagecodecs.jpegxl_encode(rgb, lossless=True), TileFormat(50002, 1, "|u1", 32, 32, 3))
    return streams


STREAMS = _valid_streams()


@pytest.mark.parametrize("codec", sorted(STREAMS))
def test_valid_stream_decodes_and_truncated_stream_raises(codec: str) -> None:
    data, fmt = STREAMS[codec]
    tile = decode_tile(data, fmt)
    assert tile.shape == (32, 32, fmt.samples)
    with pytest.raises(DecodeError):
        decode_tile(data[: len(data) // 2], fmt)


@pytest.mark.parametrize("codec", sorted(set(STREAMS) - {"none", "packbits", "lzw"}))
def test_garbage_stream_raises(codec: str) -> None:
    """Codecs with headers or checksums reject garbage (LZW, PackBits and raw bytes decode anything)."""
    _, fmt = STREAMS[codec]
    garbage = np.random.default_rng(11).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    with pytest.raises(DecodeError):
        decode_tile(garbage, fmt)
    with pytest.raises(DecodeError):
        decode_tile(b"", fmt)


def test_lerc_deflate_layer_bomb_raises() -> None:
    fmt = TileFormat(34887, 1, "<f4", 32, 32, 1, lerc_parameters=(4, 1))
    with pytest.raises(DecodeError, match="more than"):
        decode_tile(zlib.compress(bytes(50_000_000), 1), fmt)


def test_image_claiming_huge_size_is_rejected_before_decoding() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    jpeg = bytearray(imagecodecs.jpeg8_encode(rgb))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")  # height, width
    with pytest.raises(DecodeError, match="does not fit"):
        decode_tile(bytes(jpeg), TileFormat(7, 1, "|u1", 16, 16, 3, photometric=6))
    lerc = bytearray(imagecodecs.lerc_encode(np.zeros((16, 16), np.float32)))
    lerc[14:18] = (1 << 30).to_bytes(4, "little")  # nRows (version 3+: after the checksum)
    with pytest.raises(DecodeError, match="LERC image is"):
        decode_tile(bytes(lerc), TileFormat(34887, 1, "<f4", 16, 16, 1, lerc_parameters=(4, 0)))


def test_decompression_bombs_stay_bounded_in_memory() -> None:
    """1 GiB-class bombs against a 64 KiB tile, in a fresh interpreter whose peak RSS we can read."""
    script = textwrap.dedent(
        """
        import resource, zlib, imagecodecs, numpy as np
        from rasterduck.tiff.decode import decode_tile
        from rasterduck.tiff.model import TileFormat
        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        zc = zlib.compressobj(1)
        chunk = bytes(1 << 20)
        bombs = {
            8: b"".join(zc.compress(chunk) for _ in range(256)) + zc.flush(),  # 256 MiB
            50000: imagecodecs.zstd_encode(bytes(1 << 30), level=1),  # 1 GiB
            5: imagecodecs.lzw_encode(bytes(1 << 26)),  # 64 MiB
            34925: imagecodecs.lzma_encode(bytes(1 << 24)),  # 16 MiB
            32773: b"\\x81\\x00" * (1 << 19),  # runs of 128 zeros: 64 MiB
        }
        del chunk
        base = rss()
        for comp, data in bombs.items():
            fmt = TileFormat(comp, 1, "|u1", 256, 256, 1)
            for rows in (None, 10):
                tile = decode_tile(data, fmt, rows=rows)
                assert tile.shape == ((rows or 256), 256, 1) and not tile.any(), comp
        print(rss() - base)
        """
    )
    env = {"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout.strip().splitlines()[-1])
    assert growth < 48 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MiB while decoding bombs"


# ---------------------------------------------------------------- format validation


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        (TileFormat(6, 1, "|u1", 16, 16, 1), "unsupported compression ojpeg"),
        (TileFormat(34712, 1, "|u1", 16, 16, 1), "unsupported compression code 34712"),
        (TileFormat(8, 1, "<u2", 16, 16, 1, bits_per_sample=12), "12-bit"),
        (TileFormat(8, 1, "|u1", 16, 16, 1, bits_per_sample=4), "4-bit"),
        (TileFormat(8, 3, "<u2", 16, 16, 1), "floating-point predictor needs float"),
        (TileFormat(8, 34892, "<u2", 16, 16, 1), "unsupported predictor"),
        (TileFormat(8, 2, "|u1", 16, 16, 1, bits_per_sample=1), "1-bit"),
        (TileFormat(1, 1, "<c8", 16, 16, 1), "complex sample type"),
        (TileFormat(1, 1, "<m8", 16, 16, 1), "not supported"),
        (TileFormat(8, 1, "|u1", 16, 16, 3, photometric=6), "YCbCr"),
        (TileFormat(8, 1, "|u1", 0, 16, 1), "invalid tile geometry"),
    ],
)
def test_unsupported_formats_raise(fmt: TileFormat, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_tile(zlib.compress(bytes(16 * 16 * 8)), fmt)


@pytest.mark.parametrize("rows", [0, -1, 17])
def test_rows_out_of_range_raise(rows: int) -> None:
    with pytest.raises(DecodeError, match="outside"):
        decode_tile(bytes(256), TileFormat(1, 1, "|u1", 16, 16, 1), rows=rows)


# ---------------------------------------------------------------- fuzzing


@st.composite
def _mutated(draw: st.DrawFn, base: bytes) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@pytest.mark.parametrize("codec", sorted(STREAMS))
def test_fuzz_only_decode_errors(codec: str) -> None:
    base, fmt = STREAMS[codec]

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=_mutated(base), rows=st.one_of(st.none(), st.integers(1, fmt.tile_height)))
    def run(data: bytes, rows: int | None) -> None:
        try:
            tile = decode_tile(data, fmt, rows=rows)
        except DecodeError:
            return
        assert tile.shape == (rows or fmt.tile_height, fmt.tile_width, fmt.samples)
        assert tile.dtype == np.dtype(fmt.dtype).newbyteorder("=")

    run()


def test_prefix_length_per_codec() -> None:
    """Exact rows for raw data, an estimate with headroom for Deflate, whole tiles otherwise or when the
    rows reach the bottom, the estimate nears the tile, or the tile is small."""
    from rasterduck.tiff.decode import PREFIX_SLACK, prefix_length

    fmt = TileFormat(compression=8, predictor=2, dtype="<u2", tile_width=512, tile_height=512, samples=1)
    n = 400_000
    assert prefix_length(fmt, 512, n) == n
    assert prefix_length(fmt, 20, n) == int(n * 20 / 512 * 2.0) + PREFIX_SLACK
    assert prefix_length(fmt, 200, n) == n  # the estimate exceeds 3/4 of the tile
    assert prefix_length(fmt, 20, PREFIX_SLACK) == PREFIX_SLACK  # small tiles: whole
    raw = TileFormat(compression=1, predictor=1, dtype="|u1", tile_width=512, tile_height=512, samples=3)
    assert prefix_length(raw, 7, 512 * 512 * 3) == 7 * 512 * 3
    for codec in (5, 7, 50000, 34887):  # LZW, JPEG, ZSTD, LERC: whole tiles
        assert prefix_length(TileFormat(compression=codec, predictor=1, dtype="<u2", tile_width=512,
                                        tile_height=512, samples=1), 20, n) == n
