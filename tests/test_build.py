"""Collection builders: hrefs, STAC items, records tables, the CLI; one bad asset never aborts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rasterduck
from rasterduck.build.api import BuildReport
from rasterduck.errors import AccessDeniedError

from ._paths import REPO_ROOT, corpus_dir


def stac_item(server, item_id: str, assets: dict[str, str], epsg: int | None = None) -> dict:
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": "2023-06-01T10:20:30Z", "eo:cloud_cover": 12.5, **({"proj:epsg": epsg} if epsg else {})},
        "assets": {k: {"href": server.url("geotiff/" + v), "type": "image/tiff; application=geotiff"} for k, v in assets.items()}
        | {"thumbnail": {"href": server.url("thumb.png"), "type": "image/png"}},
        "collection": "test-collection",
    }


def test_build_from_hrefs_reports_failures_and_keeps_going(server) -> None:
    urls = [server.url("geotiff/rio-tiler/cog.tif"), server.url("geotiff/missing.tif"),
            server.url("geotiff/README.md"), server.url("geotiff/gdal/cint16.tif"),
            server.url("geotiff/rio-tiler/web.tif")]
    report = BuildReport()
    c = rasterduck.build_collection(urls, report=report)
    assert len(c) == 5 and report.records == 5 and report.files == 5
    errors = {e["href"].rsplit("/", 1)[-1]: e["message"] for e in c.errors()}
    assert set(errors) == {"missing.tif", "README.md", "cint16.tif"}
    assert "404" in errors["missing.tif"]
    assert "not a TIFF" in errors["README.md"]
    assert "SampleFormat" in errors["cint16.tif"]
    assert "missing.tif" in errors["missing.tif"] or "missing.tif" in str(c.errors())
    # every COG header cost one request; the failures no more than a few
    assert report.requests == server.requests
    assert server.per_path["/geotiff/rio-tiler/cog.tif"] == 1
    ok = [a.id for a in c.iterate_rasters() if a.try_get_band_cog_metadata("b1")[0] is not None]
    assert ok == ["cog", "web"]


def test_rotated_and_ungeoreferenced_files_build(server) -> None:
    c = rasterduck.build_collection([server.url("geotiff/rasterio/rotated.tif"), server.url("geotiff/pillow/hopper_lzma.tif")])
    assert c.errors() == []
    rows = {r["id"]: r for r in c.to_arrow().to_pylist()}
    # a rotated grid keeps its full affine (rasteret refuses 6-value rotated transforms clearly)
    assert rows["rotated"]["b1_metadata"]["transform"] == pytest.approx([17.320508075688775, 5.0, 100.0, 10.0, -8.660254037844387, 200.0])
    # no georeferencing: pixel space like GDAL (identity), no CRS, no footprint
    assert rows["hopper_lzma"]["b1_metadata"]["transform"] == [1.0, 0.0, 1.0, 0.0]
    assert rows["hopper_lzma"]["crs"] is None and rows["hopper_lzma"]["geometry"] is None


def test_build_from_stac_items(server, tmp_path: Path) -> None:
    items = {"type": "FeatureCollection", "features": [
        stac_item(server, "S2_A", {"red": "rio-tiler/cog.tif", "nir": "rio-tiler/cog_int16.tif"}, epsg=32621),
        stac_item(server, "S2_B", {"red": "rio-tiler/cog.tif"}),
    ]}
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items))
    c = rasterduck.build_collection(stac=path)
    rows = {r["id"]: r for r in c.to_arrow().to_pylist()}
    assert set(c.bands) == {"red", "nir"}  # the PNG thumbnail is not a band
    assert rows["S2_A"]["proj:epsg"] == 32621 and rows["S2_B"]["proj:epsg"] == 32621  # B from the header
    assert rows["S2_A"]["eo:cloud_cover"] == 12.5 and rows["S2_A"]["collection"] == "test-collection"
    assert rows["S2_B"]["nir_metadata"] is None
    assert str(rows["S2_A"]["datetime"]) == "2023-06-01 10:20:30"
    # band selection and renaming: code -> asset key
    c2 = rasterduck.build_collection(stac=items, bands={"B04": "red"})
    assert c2.bands == ["B04"]


def test_build_from_records_table(server, tmp_path: Path) -> None:
    table = pa.table({
        "id": [1, 2],
        "datetime": [2020, 2021],
        "scene_url": [server.url("geotiff/rasterio/rgb_lzw.tif"), server.url("geotiff/rasterio/rgb_deflate.tif")],
        "label": ["a", "b"],
    })
    pq.write_table(table, tmp_path / "records.parquet")
    c = rasterduck.build_collection(table=tmp_path / "records.parquet", href_column="scene_url",
                                    band_index_map={"red": 0, "green": 1, "blue": 2})
    rows = {r["id"]: r for r in c.to_arrow().to_pylist()}
    assert set(rows) == {"1", "2"} and rows["1"]["label"] == "a"
    assert str(rows["2"]["datetime"]) == "2021-01-01 00:00:00"
    # rgb_deflate is planar-separate striped: each band gets its own plane's strips
    g = rows["2"]["green_metadata"]
    r = rows["2"]["red_metadata"]
    assert g["planar_configuration"] == 2 and len(g["tile_offsets"]) == len(r["tile_offsets"])
    assert g["tile_offsets"][0] != r["tile_offsets"][0]
    # enriching an existing collection table: same assets, headers fetched again
    again = rasterduck.build_collection(table=c.to_arrow())
    assert again.to_arrow()["green_metadata"].to_pylist() == c.to_arrow()["green_metadata"].to_pylist()


def test_local_paths_need_permission(tmp_path: Path) -> None:
    src = corpus_dir() / "rio-tiler" / "cog.tif"
    c = rasterduck.build_collection([str(src)])  # a build from local paths allows their own folders
    assert c.errors() == []
    items = {"type": "Feature", "id": "x", "geometry": None, "properties": {"datetime": "2020-01-01T00:00:00Z"},
             "assets": {"b": {"href": str(src), "type": "image/tiff"}}}
    c = rasterduck.build_collection(stac=items)  # a STAC item naming a local file: denied by default
    assert "AccessDenied" in c.errors()[0]["message"]
    with pytest.raises(AccessDeniedError):
        from rasterduck.io.backend import DefaultBackend
        from rasterduck.io.loop import run_sync

        run_sync(DefaultBackend().read_ranges(str(src), [(0, 8)]))
    c = rasterduck.build_collection(stac=items, allow_local=[str(corpus_dir())])
    assert c.errors() == []


def test_cli_build(server, tmp_path: Path) -> None:
    out = tmp_path / "c.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "rasterduck.cli", "build", str(out), server.url("geotiff/rio-tiler/cog.tif"),
         server.url("geotiff/rasterio/rgb_lzw.tif"), server.url("geotiff/nothing.tif"), "--bands", "red,green,blue"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 records, 9 assets (3 files), 5 failures" in proc.stdout, proc.stdout
    assert "requests" in proc.stdout and " s" in proc.stdout
    assert "nothing.tif" in proc.stderr
    c = rasterduck.open_collection(out)
    assert c.bands == ["red", "green", "blue"]


def test_build_from_stac_url(make_server, tmp_path: Path) -> None:
    import shutil

    shutil.copy(corpus_dir() / "rio-tiler" / "cog.tif", tmp_path / "cog.tif")
    srv = make_server(root=tmp_path)
    item = {"type": "Feature", "id": "remote", "geometry": None, "properties": {"datetime": "2022-02-02T00:00:00Z"},
            "assets": {"B01": {"href": "cog.tif", "type": "image/tiff; application=geotiff"}}}
    (tmp_path / "item.json").write_text(json.dumps(item))
    c = rasterduck.build_collection(stac=srv.url("item.json"))
    assert c.errors() == []
    row = c.to_arrow().to_pylist()[0]
    assert row["assets"]["B01"]["href"] == srv.url("cog.tif")  # relative href resolved against the item URL
    assert row["B01_metadata"]["image_width"] == 2658
