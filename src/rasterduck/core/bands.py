"""Band code aliases per data source, so 'B04' finds a STAC asset called 'red' and back."""

from __future__ import annotations

SENTINEL2 = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
    "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B11": "swir16", "B12": "swir22",
    "SCL": "scl",
}
LANDSAT = {
    "B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "nir08", "B6": "swir16", "B7": "swir22",
    "QA_PIXEL": "qa_pixel", "QA_RADSAT": "qa_radsat", "QA_AEROSOL": "qa_aerosol",
}
REGISTRY: dict[str, dict[str, str]] = {"sentinel-2-l2a": SENTINEL2, "landsat-c2-l2": LANDSAT}


def candidates(code: str, data_source: str = "") -> list[str]:
    """Asset keys to try for a band code: the code, its alias, its reverse alias (first wins)."""
    out = [code]
    forward = REGISTRY.get(data_source, {})
    if code in forward:
        out.append(forward[code])
    for k, v in forward.items():
        if v == code:
            out.append(k)
    return out
