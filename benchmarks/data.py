"""Benchmark data: a Sentinel-2-like collection of real COGs written with GDAL (rasterio), plus AOI sets.

8 scenes over 2 UTM zones (4 dates of one tile in EPSG:32632 and 4 of one tile in EPSG:32633 whose
footprints overlap around 12 E / 48.5 N, like neighbouring S2 tiles at a zone boundary), 4 uint16 bands
(B02, B03, B04, B08) in separate files, 20 m pixels, 1024 px tiles, DEFLATE + predictor 2, overviews,
nodata 0. The content is a field pattern (rotated, staggered parcels with per-date reflectance), smooth
large-scale variation and sensor noise, so that DEFLATE keeps 50-60 % of the raw bytes like real L2A
tiles; some scenes have an orbit-edge wedge of nodata. Everything is seeded and cached in
benchmarks/data/<layout>/ (gitignored); `python benchmarks/data.py [--quick]` builds it alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_ROOT = HERE / "data"
BANDS = ("B02", "B03", "B04", "B08")
PIXEL = 20.0
TILE = 1024
CENTRE = (12.0, 48.5)  # lon, lat: on the 32/33 zone boundary, inside both footprints
TILES = (("32UQU", 32), ("33UUP", 33))
DATES = ("2024-05-03", "2024-05-23", "2024-06-12", "2024-07-02")
GENERATOR_VERSION = 3  # bump to invalidate caches when the content recipe changes
# per band: (field reflectance low, high, smooth-variation amplitude, sensor noise sigma)
BAND_RECIPE = {"B02": (250, 900, 120, 8.0), "B03": (400, 1200, 140, 8.0),
               "B04": (200, 1700, 180, 7.0), "B08": (1400, 4600, 300, 6.0)}


@dataclass(frozen=True)
class Layout:
    """Sizes of one data set: image size and how many AOIs of each kind."""

    name: str
    size: int  # pixels per side
    n_fields: int  # S2: small AOIs
    n_large: int  # S3: ~5 km AOIs
    n_stream: int  # S5: AOIs for the SQL stream (rows = n_stream x 8 scenes)
    n_virtual: int  # S6: virtual scenes
    seed: int = 20241127


LAYOUTS = {
    "full": Layout("full", 5490, 200, 20, 12500, 200),
    "quick": Layout("quick", 2048, 12, 3, 500, 24),
}


def layout_dir(layout: Layout) -> Path:
    """Folder of one layout's files (served as the HTTP root)."""
    return DATA_ROOT / layout.name


def _transformers() -> dict[int, Any]:
    from pyproj import Transformer

    return {z: Transformer.from_crs("EPSG:4326", f"EPSG:326{z}", always_xy=True) for _, z in TILES}


def scene_grid(layout: Layout) -> list[dict[str, Any]]:
    """The 8 scenes: id, date, EPSG, affine (a, b, c, d, e, f) and band file paths relative to the root."""
    fwd = _transformers()
    ext = layout.size * PIXEL
    scenes = []
    for tile, zone in TILES:
        px, py = fwd[zone].transform(*CENTRE)
        # zone 32's tile sits west of the centre (centre at 72 % of its width), zone 33's east (28 %)
        frac = 0.72 if zone == 32 else 0.28
        x0 = math.floor((px - frac * ext) / 60.0) * 60.0 + (-40.0 if zone == 32 else -20.0)
        y0 = math.floor((py + 0.5 * ext) / 60.0) * 60.0
        for d, date in enumerate(DATES):
            sid = f"S2_T{tile}_{date.replace('-', '')}_L2A"
            scenes.append({
                "id": sid, "tile": tile, "zone": zone, "epsg": 32600 + zone, "date_index": d,
                "datetime": f"{date}T10:30:00Z",
                "transform": [PIXEL, 0.0, x0, 0.0, -PIXEL, y0],
                "width": layout.size, "height": layout.size,
                "files": {b: f"{tile}/{date}/{sid}_{b}.tif" for b in BANDS},
            })
    return scenes


# ---------------------------------------------------------------- pixel content
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear-interpolation matrix mapping n_in control points onto n_out samples."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    w = (pos - i0).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] = 1 - w
    m[np.arange(n_out), i0 + 1] = w
    return m


def _smooth(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1] (bilinear upsampling of a coarse grid, as two matrix products)."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    m = _interp_matrix(n, cells)
    return np.asarray(m @ coarse @ m.T, dtype=np.float32)


def _field_ids(layout: Layout, zone: int) -> np.ndarray:
    """Parcel id per pixel: rotated, staggered rectangles of 6-25 px, fixed per tile (fields do not move)."""
    rng = np.random.default_rng([layout.seed, zone, 1])
    n = layout.size
    angle = rng.uniform(0.15, 0.5)
    rows = np.arange(n, dtype=np.float32)[:, None]
    cols = np.arange(n, dtype=np.float32)[None, :]
    u = cols * math.cos(angle) + rows * math.sin(angle)
    v = -cols * math.sin(angle) + rows * math.cos(angle)
    # field sizes vary slowly across the tile
    scale = 1.0 + 0.6 * _smooth(rng, n, 6)
    vi = np.floor(v / (11.0 * scale)).astype(np.int64)
    ui = np.floor((u + (vi % 7) * 5.3) / (17.0 * scale)).astype(np.int64)
    return ((ui * 73856093) ^ (vi * 19349663)) & 0xFFFF


def scene_band_pixels(layout: Layout, scene: dict[str, Any], band: str, fields: np.ndarray) -> np.ndarray:
    """One band of one scene as uint16 (0 = nodata only in the orbit-edge wedge)."""
    n = layout.size
    b = BANDS.index(band)
    lo, hi, amp, sigma = BAND_RECIPE[band]
    rng = np.random.default_rng([layout.seed, scene["zone"], scene["date_index"], b])
    table = rng.uniform(lo, hi, 65536).astype(np.float32)
    img = table[fields]
    img += amp * _smooth(rng, n, 40)
    img += rng.standard_normal((n, n), dtype=np.float32) * np.float32(sigma)
    np.clip(img, 1, 65535, out=img)
    out = img.astype(np.uint16)
    wedge = (scene["zone"], scene["date_index"])
    if wedge in ((33, 1), (33, 3), (32, 2)):  # orbit edges: a diagonal strip of nodata
        rows = np.arange(n)[:, None]
        cols = np.arange(n)[None, :]
        if scene["zone"] == 33:
            out[cols + 0.35 * rows > 1.22 * n] = 0
        else:
            out[cols - 0.35 * rows < -0.2 * n] = 0
    return out


def write_cog(path: Path, arr: np.ndarray, epsg: int, transform: list[float]) -> None:
    """Write a COG with GDAL's COG driver: 1024 tiles, DEFLATE + predictor 2, overviews, nodata 0."""
    import rasterio
    import rasterio.shutil
    from affine import Affine
    from rasterio.io import MemoryFile

    a, b, c, d, e, f = transform
    profile = {"driver": "GTiff", "width": arr.shape[1], "height": arr.shape[0], "count": 1, "dtype": "uint16",
               "crs": f"EPSG:{epsg}", "transform": Affine(a, b, c, d, e, f), "nodata": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):
        with MemoryFile() as mem:
            with mem.open(**profile) as ds:
                ds.write(arr, 1)
            with mem.open() as src:
                rasterio.shutil.copy(src, tmp, driver="COG", BLOCKSIZE=TILE, COMPRESS="DEFLATE", PREDICTOR="YES",
                                     OVERVIEWS="AUTO", RESAMPLING="AVERAGE", NUM_THREADS="ALL_CPUS")
    tmp.replace(path)


# ---------------------------------------------------------------- AOIs
def _polygon(cx: float, cy: float, w: float, h: float, angle: float, rng: np.random.Generator,
             jitter: float = 0.08) -> list[tuple[float, float]]:
    """A field-like quadrilateral (sometimes an L shape) centred at (cx, cy), sizes in metres."""
    if rng.random() < 0.15:  # L-shaped parcel, non-convex
        pts = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.0), (0.0, 0.0), (0.0, 0.5), (-0.5, 0.5)]
    else:
        pts = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    ca, sa = math.cos(angle), math.sin(angle)
    ring = []
    for px, py in pts:
        x = (px + rng.uniform(-jitter, jitter)) * w
        y = (py + rng.uniform(-jitter, jitter)) * h
        ring.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return ring


def _blob(cx: float, cy: float, radius: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """An irregular 14-vertex polygon of about `radius` metres (a municipality-sized AOI)."""
    ring = []
    for k in range(14):
        t = 2 * math.pi * k / 14
        r = radius * rng.uniform(0.7, 1.15)
        ring.append((cx + r * math.cos(t), cy + r * math.sin(t)))
    return ring


def make_aois(layout: Layout) -> dict[str, Any]:
    """AOI sets in EPSG:4326 as WKB hex: fields (S2), large (S3), series (S1/S6), stream (S5)."""
    import shapely
    from pyproj import Transformer

    fwd = _transformers()[32]
    inv = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    px, py = fwd.transform(*CENTRE)
    ext = layout.size * PIXEL
    rng = np.random.default_rng([layout.seed, 99])

    def to_wkb(ring: list[tuple[float, float]]) -> str:
        xs, ys = inv.transform([p[0] for p in ring], [p[1] for p in ring])
        return str(shapely.to_wkb(shapely.Polygon(list(zip(xs, ys, strict=True))), hex=True))

    # S2: a farming district straddling the east edge of zone 32's tile, so most fields hit 8 scenes
    fields = []
    cx0, half = px + 0.22 * ext, 0.075 * ext
    for _ in range(layout.n_fields):
        cx, cy = cx0 + rng.uniform(-half, half), py + rng.uniform(-half, half)
        fields.append(to_wkb(_polygon(cx, cy, rng.uniform(100, 500), rng.uniform(100, 500), rng.uniform(0, math.pi), rng)))
    # S3: ~5 km AOIs anywhere over both footprints
    large = []
    for _ in range(layout.n_large):
        cx, cy = px + rng.uniform(-0.66, 0.66) * ext, py + rng.uniform(-0.42, 0.42) * ext
        large.append(to_wkb(_blob(cx, cy, rng.uniform(2000, 2800), rng)))
    # S1/S6: one field in the overlap (all 8 scenes)
    series = to_wkb(_polygon(px - 0.05 * ext, py + 0.11 * ext, 320, 260, 0.6, rng, jitter=0.05))
    # S5: many small fields in a 5 km district inside the overlap
    stream = []
    for _ in range(layout.n_stream):
        cx, cy = px + rng.uniform(-2500, 2500), py - 0.2 * ext + rng.uniform(-2500, 2500)
        stream.append(to_wkb(_polygon(cx, cy, rng.uniform(60, 240), rng.uniform(60, 240), rng.uniform(0, math.pi), rng)))
    return {"fields": fields, "large": large, "series": series, "stream": stream}


# ---------------------------------------------------------------- build + cache
def _key(layout: Layout) -> str:
    return hashlib.sha1(json.dumps([asdict(layout), GENERATOR_VERSION, BAND_RECIPE]).encode()).hexdigest()[:12]


def ensure_data(layout: Layout, log: Any = print) -> dict[str, Any]:
    """Generate (or reuse) the layout's COGs and AOIs; returns the manifest (scenes, AOIs, sizes)."""
    root = layout_dir(layout)
    manifest_path = root / "manifest.json"
    key = _key(layout)
    if manifest_path.exists():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if manifest.get("key") == key and all((root / f).exists() for s in manifest["scenes"] for f in s["files"].values()):
            return manifest
    root.mkdir(parents=True, exist_ok=True)
    scenes = scene_grid(layout)
    t0 = time.perf_counter()
    sizes: dict[str, int] = {}
    full_res_bytes: dict[str, int] = {}
    fields_by_zone: dict[int, np.ndarray] = {}
    for i, s in enumerate(scenes):
        if s["zone"] not in fields_by_zone:
            fields_by_zone = {s["zone"]: _field_ids(layout, s["zone"])}
        for band in BANDS:
            path = root / s["files"][band]
            arr = scene_band_pixels(layout, s, band, fields_by_zone[s["zone"]])
            write_cog(path, arr, s["epsg"], s["transform"])
            sizes[s["files"][band]] = path.stat().st_size
            full_res_bytes[s["files"][band]] = _level0_bytes(path)
        log(f"  data: scene {i + 1}/{len(scenes)} written ({time.perf_counter() - t0:.0f} s)")
    raw = layout.size * layout.size * 2
    ratios = [v / raw for v in full_res_bytes.values()]
    manifest = {
        "key": key, "layout": asdict(layout), "bands": list(BANDS), "scenes": scenes, "aois": make_aois(layout),
        "file_bytes": sizes, "compression_ratio_level0": {"min": min(ratios), "mean": sum(ratios) / len(ratios),
                                                          "max": max(ratios)},
        "seconds": time.perf_counter() - t0,
    }
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def _level0_bytes(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        return int(sum(tf.pages[0].databytecounts))


def main() -> None:
    """Build the data set of a layout and print its compression ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    m = ensure_data(LAYOUTS["quick" if args.quick else "full"])
    print(json.dumps({"compression_ratio_level0": m["compression_ratio_level0"],
                      "total_bytes": sum(m["file_bytes"].values()), "seconds": m["seconds"]}))


if __name__ == "__main__":
    main()
