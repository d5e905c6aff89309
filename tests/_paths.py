"""Where the shared test data lives: $RASTERDUCK_TESTDATA, else ../shared/testdata beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def testdata_dir() -> Path:
    """The folder holding geotiff/ and collections/ (the shared corpus)."""
    env = os.environ.get("RASTERDUCK_TESTDATA")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "testdata"


def corpus_dir() -> Path:
    """The real-world GeoTIFF corpus with MANIFEST.json."""
    return testdata_dir() / "geotiff"
