"""Scenario specs: which records, AOIs and bands each scenario reads, as JSON the reader processes load.

    S1  one field x 8 scenes x 4 bands                  (read)
    S2  the field set x intersecting scenes x 2 bands   (read; B04, B08)
    S3  the large AOIs x intersecting scenes x 4 bands  (read)
    S4  building the collection: 32 COGs (8 scenes x 4 bands) and 400 COGs (200 virtual scenes x 2 bands)
    S5  a 100k-row SQL stream: stream fields x 8 scenes x 2 bands, consumed batch by batch (peak RSS)
    S6  one field x 200 virtual scenes x 2 bands        (read; every scene a distinct URL of a real file)

(Quick mode scales the counts down.) Pairs are (scene, AOI) whose lon/lat boxes overlap, which is what a
footprint index gives any reader; a pair whose window turns out empty yields no array in any reader.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import shapely
from pyproj import Transformer

READ_SCENARIOS = ("S1", "S2", "S3", "S6")
ALL_SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6")
S6_BANDS = ["B04", "B08"]
CHECK_AOIS_S5 = 100


def footprint(scene: dict[str, Any]) -> shapely.Polygon:
    """A scene's outline in lon/lat (edges densified before reprojection)."""
    a, _b, c, _d, e, f = scene["transform"]
    w, h = scene["width"], scene["height"]
    n = 16
    cols = np.concatenate([np.linspace(0, w, n), np.full(n, w), np.linspace(w, 0, n), np.zeros(n)])
    rows = np.concatenate([np.zeros(n), np.linspace(0, h, n), np.full(n, h), np.linspace(h, 0, n)])
    t = Transformer.from_crs(f"EPSG:{scene['epsg']}", "EPSG:4326", always_xy=True)
    xs, ys = t.transform(c + cols * a, f + rows * e)
    return shapely.Polygon(np.column_stack([xs, ys]))


def scene_entries(manifest: dict[str, Any], base_url: str, n_virtual: int = 0, bands: list[str] | None = None
                  ) -> list[dict[str, Any]]:
    """The 8 real scenes, or `n_virtual` virtual ones (scene j serves real scene j % 8 under /v/s<j>/)."""
    real = manifest["scenes"]
    bands = bands or manifest["bands"]
    out = []
    if not n_virtual:
        for s in real:
            out.append({**_geo(s), "id": s["id"], "datetime": s["datetime"],
                        "assets": {b: f"{base_url}/{s['files'][b]}" for b in bands}})
        return out
    start = dt.datetime(2019, 1, 1, 10, 30)
    for j in range(n_virtual):
        s = real[j % len(real)]
        when = start + dt.timedelta(days=5 * j)
        out.append({**_geo(s), "id": f"S2V_{j:03d}_{s['id']}", "datetime": when.isoformat() + "Z",
                    "assets": {b: f"{base_url}/v/s{j:03d}/{s['files'][b]}" for b in bands}})
    return out


def _geo(s: dict[str, Any]) -> dict[str, Any]:
    fp = footprint(s)
    return {"epsg": s["epsg"], "transform": s["transform"], "width": s["width"], "height": s["height"],
            "footprint_wkb": shapely.to_wkb(fp, hex=True), "bbox": list(fp.bounds)}


def _pairs(scenes: list[dict[str, Any]], aois: list[dict[str, Any]]) -> list[list[Any]]:
    boxes = [shapely.from_wkb(bytes.fromhex(a["wkb"])).bounds for a in aois]
    out = []
    for si, s in enumerate(scenes):
        x0, y0, x1, y1 = s["bbox"]
        idx = [i for i, (a0, b0, a1, b1) in enumerate(boxes) if a1 >= x0 and a0 <= x1 and b1 >= y0 and b0 <= y1]
        if idx:
            out.append([si, idx])
    return out


def _aois(prefix: str, wkbs: list[str]) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:05d}", "wkb": w} for i, w in enumerate(wkbs)]


def build_specs(manifest: dict[str, Any], base_url: str, cache: str) -> dict[str, dict[str, Any]]:
    """Every scenario's spec (S4 has two: S4-32 and S4-400)."""
    layout = manifest["layout"]
    bands = manifest["bands"]
    main = scene_entries(manifest, base_url)
    virtual = scene_entries(manifest, base_url, n_virtual=layout["n_virtual"], bands=S6_BANDS)
    a = manifest["aois"]
    colls = {"main": {"rasterduck_collection": f"{cache}/collections/main.parquet",
                      "rasteret_collection": f"{cache}/collections/main_records"},
             "virtual": {"rasterduck_collection": f"{cache}/collections/virtual.parquet",
                         "rasteret_collection": f"{cache}/collections/virtual_records"}}

    def read(name: str, scenes: list[dict[str, Any]], aois: list[dict[str, Any]], bs: list[str], coll: str,
             kind: str = "read", **extra: Any) -> dict[str, Any]:
        return {"scenario": name, "kind": kind, "bands": bs, "base_url": base_url, "scenes": scenes, "aois": aois,
                "pairs": _pairs(scenes, aois), "threads": 64, **colls[coll], **extra}

    def build(name: str, scenes: list[dict[str, Any]], bs: list[str]) -> dict[str, Any]:
        return {"scenario": name, "kind": "build", "bands": bs, "base_url": base_url, "records": scenes,
                "rasterduck_out": f"{cache}/s4/{name}.parquet", "rasteret_out": f"{cache}/s4/{name}_records"}

    stream_aois = _aois("s", a["stream"])
    specs = {
        "S1": read("S1", main, _aois("series", [a["series"]]), bands, "main"),
        "S2": read("S2", main, _aois("f", a["fields"]), ["B04", "B08"], "main"),
        "S3": read("S3", main, _aois("L", a["large"]), bands, "main"),
        "S4-32": build("S4-32", main, bands),
        f"S4-{len(virtual) * len(S6_BANDS)}": build(f"S4-{len(virtual) * len(S6_BANDS)}", virtual, S6_BANDS),
        "S5": read("S5", main, stream_aois, ["B04", "B08"], "main", kind="stream", batch_rows=2048,
                   check_aois=[x["id"] for x in stream_aois[:CHECK_AOIS_S5]]),
        "S6": read("S6", virtual, _aois("series", [a["series"]]), S6_BANDS, "virtual"),
    }
    return specs


def setup_builds(specs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Build specs that produce the collections the read scenarios use (main: 4 bands, virtual: 2)."""
    s4 = [k for k in specs if k.startswith("S4-")]
    main, virtual = specs["S4-32"], specs[next(k for k in s4 if k != "S4-32")]
    r = specs["S1"]
    v = specs["S6"]
    return [
        {**main, "scenario": "setup-main", "rasterduck_out": r["rasterduck_collection"], "rasteret_out": r["rasteret_collection"]},
        {**virtual, "scenario": "setup-virtual", "rasterduck_out": v["rasterduck_collection"], "rasteret_out": v["rasteret_collection"]},
    ]


def check_subset(spec: dict[str, Any]) -> dict[str, Any]:
    """S5's reference spec: only the check AOIs, as an ordinary read."""
    keep = set(spec["check_aois"])
    idx = [i for i, x in enumerate(spec["aois"]) if x["id"] in keep]
    aois = [spec["aois"][i] for i in idx]
    return {**spec, "kind": "read", "scenario": "S5-check", "aois": aois, "pairs": _pairs(spec["scenes"], aois)}
