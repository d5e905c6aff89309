"""Reader: rasteret (PyPI, Python 3.12 venv) with an obstore HTTPStore that allows plain http.

Build (S4): `rasteret.build_from_table(records, enrich_cog=True, backend=...)` over the same records the
rasterduck build gets, exported with `Collection.export` (its own cache format), then checked against the
tile tables of the files. Read (S1-S3, S6): `rasteret.load(collection).get_gdf(aois, bands, backend=...)`,
the documented read call; its rows are (record, geometry, band) arrays.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Run, key, main_guard, pixel_hash

run = Run("rasteret")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import rasteret  # noqa: E402
import shapely  # noqa: E402
from obstore.store import HTTPStore  # noqa: E402
from rasteret.cloud import ObstoreBackend  # noqa: E402

run.imported()


def _backend(base_url: str) -> Any:
    store = HTTPStore.from_url(base_url + "/", client_options={"allow_http": True})
    return ObstoreBackend(store, url_prefix=base_url + "/")


def _records(spec: dict[str, Any]) -> pa.Table:
    """The records table rasteret builds from: id, datetime, footprint geometry (WKB), assets."""
    import datetime as dt

    rows = spec["records"]
    asset_type = pa.struct([(b, pa.struct([("href", pa.string())])) for b in spec["bands"]])
    return pa.table({
        "id": [r["id"] for r in rows],
        "datetime": pa.array([dt.datetime.fromisoformat(r["datetime"].replace("Z", "")) for r in rows], pa.timestamp("us")),
        "geometry": pa.array([bytes.fromhex(r["footprint_wkb"]) for r in rows], pa.binary()),
        "assets": pa.array([{b: {"href": r["assets"][b]} for b in spec["bands"]} for r in rows], asset_type),
    })


def build(spec: dict[str, Any]) -> dict[str, str]:
    """S4: build and export the collection; hashes of each band's tile table for the check."""
    out_dir = Path(spec["rasteret_out"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    coll = rasteret.build_from_table(_records(spec), name="bench", enrich_cog=True, band_codes=spec["bands"],
                                     backend=_backend(spec["base_url"]), workspace_dir=out_dir)
    run.done()
    table = coll.dataset.to_table()
    hashes = {}
    for row in table.select(["id"] + [f"{b}_metadata" for b in spec["bands"]]).to_pylist():
        for b in spec["bands"]:
            m = row[f"{b}_metadata"]
            if m is not None:
                hashes[key("tiles", row["id"], b)] = pixel_hash(np.array([m["tile_offsets"], m["tile_byte_counts"]], np.int64))
    run.extra["collection"] = str(out_dir)
    run.extra["records"] = table.num_rows
    return hashes


def read(spec: dict[str, Any]) -> dict[str, str]:
    """S1-S3, S6: get_gdf over every AOI of the scenario; hashes per (AOI, record, band)."""
    aois = [shapely.from_wkb(bytes.fromhex(a["wkb"])) for a in spec["aois"]]
    coll = rasteret.load(spec["rasteret_collection"])
    gdf = coll.get_gdf(geometries=aois, bands=spec["bands"], backend=_backend(spec["base_url"]))
    run.done()
    run.extra["rows"] = len(gdf)
    hashes = {}
    for rid, gid, band, data in zip(gdf["record_id"], gdf["geometry_id"], gdf["band"], gdf["data"], strict=True):
        arr = np.asarray(data)
        if arr.size:
            hashes[key(spec["aois"][int(gid) - 1]["id"], str(rid), str(band))] = pixel_hash(arr)
    return hashes


main_guard(run, lambda: build(run.spec) if run.spec["kind"] == "build" else read(run.spec))
