"""Rebuild examples/sample/collection.parquet from the GeoTIFFs shipped beside it (offline).

The hrefs are stored relative to the collection's folder; `open_collection` resolves them, so the
sample works from any working directory.
"""

from __future__ import annotations

from pathlib import Path

import rasterduck

HERE = Path(__file__).resolve().parent / "sample"


def main() -> None:
    files = ["data/cog.tif", "data/web.tif"]
    coll = rasterduck.build_collection(
        [str(HERE / f) for f in files], ids=["greenland-u16", "quebec-u16"],
        datetimes=["2024-05-01T12:00:00Z", "2024-06-01T12:00:00Z"], name="sample",
        description="two uint16 COGs from rio-tiler's test fixtures (BSD-3-Clause, see data/LICENSE-rio-tiler)",
    )
    coll = coll.rewrite_hrefs({str(HERE) + "/": ""})
    coll.to_parquet(HERE / "collection.parquet")
    print(coll, coll.errors())


if __name__ == "__main__":
    main()
