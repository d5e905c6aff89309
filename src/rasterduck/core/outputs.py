"""Shapes of load_bands results: the dependency-free ReadResult list, xarray, GeoDataFrame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import RasterduckError
from .geometry import to_shapely_list
from .read import ReadRequest, ReadResult, band_sources, read_batch


def _backend(backend: Any, max_concurrent: int) -> Any:
    if backend is not None:
        return backend
    from ..io.loop import get_default_backend

    return get_default_backend()


async def read_accessor(
    accessor: Any,
    geometries: Any,
    band_codes: Sequence[str],
    *,
    max_concurrent: int = 50,
    backend: Any = None,
    geometry_crs: int | str | None = 4326,
    all_touched: bool = False,
    pixel_budget: int | None = None,
    raise_errors: bool = True,
) -> list[ReadResult | BaseException | None]:
    """Read every geometry of one record; per geometry a ReadResult or None (AOI misses the raster)."""
    geoms = to_shapely_list(geometries)
    crs = _crs_string(geometry_crs)
    sources = band_sources(accessor, band_codes)
    reqs = [ReadRequest(accessor.id, g, crs, sources, all_touched) for g in geoms]
    from .read import DEFAULT_PIXEL_BUDGET

    results = await read_batch(reqs, _backend(backend, max_concurrent),
                               pixel_budget=pixel_budget if pixel_budget is not None else DEFAULT_PIXEL_BUDGET)
    if raise_errors:
        for r in results:
            if isinstance(r, BaseException):
                raise r
    return results


def _crs_string(crs: int | str | None) -> str | None:
    if crs is None:
        return None
    if isinstance(crs, int):
        return f"EPSG:{crs}"
    return str(crs)


def pixel_centres(transform: tuple[float, ...], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of pixel centres of a north-up/south-up window."""
    a, _b, c, _d, e, f = transform
    xs = c + (np.arange(width) + 0.5) * a
    ys = f + (np.arange(height) + 0.5) * e
    return xs, ys


def to_xarray(accessor: Any, results: Sequence[ReadResult | BaseException | None]) -> Any:
    """An xarray.Dataset: one variable per band, dims (time, geometry, y, x), pixel-centre coords."""
    try:
        import xarray as xr
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("for_xarray=True needs xarray: pip install 'rasterduck[xarray]'") from exc
    from pyproj import CRS

    parts = []
    for gid, r in enumerate(results, start=1):
        if not isinstance(r, ReadResult):
            continue
        xs, ys = pixel_centres(r.transform, r.height, r.width)
        vars_ = {}
        for i, band in enumerate(r.bands):
            da = xr.DataArray(r.data[i], dims=("y", "x"), coords={"y": ys, "x": xs})
            da.attrs["_FillValue"] = r.nodata
            vars_[band] = da
        ds = xr.Dataset(vars_)
        ds = ds.expand_dims(time=[np.datetime64(accessor.info.datetime, "ns") if accessor.info.datetime else np.datetime64("NaT", "ns")],
                            geometry=[gid])
        parts.append((ds, r))
    if not parts:
        return xr.Dataset()
    first = parts[0][1]
    fill = first.nodata
    merged = xr.merge([p for p, _ in parts], join="outer", fill_value=fill, compat="no_conflicts") if len(parts) > 1 else parts[0][0]
    for band in first.bands:
        if band in merged and merged[band].dtype != first.data.dtype:
            merged[band] = merged[band].astype(first.data.dtype)
    a, b, c, d, e, f = first.transform
    spatial_ref = xr.DataArray(0)
    if first.crs:
        crs = CRS.from_user_input(first.crs)
        spatial_ref.attrs.update(crs.to_cf())
        spatial_ref.attrs["crs_wkt"] = crs.to_wkt()
    spatial_ref.attrs["GeoTransform"] = f"{c} {a} {b} {f} {d} {e}"
    merged = merged.assign_coords(spatial_ref=spatial_ref)
    for band in first.bands:
        merged[band].encoding["grid_mapping"] = "spatial_ref"
    merged.attrs.update({"record_id": accessor.id, "crs": first.crs or ""})
    return merged


def to_geodataframe(accessor: Any, geoms: Any, results: Sequence[ReadResult | BaseException | None],
                    geometry_crs: int | str | None) -> Any:
    """A GeoDataFrame with one row per (geometry, band): the array, window transform, CRS."""
    try:
        import geopandas as gpd
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("for_xarray=False needs geopandas: pip install 'rasterduck[geopandas]'") from exc
    shapes = to_shapely_list(geoms)
    rows = []
    for gid, (g, r) in enumerate(zip(shapes, results, strict=True), start=1):
        if not isinstance(r, ReadResult):
            continue
        for i, band in enumerate(r.bands):
            rows.append({
                "record_id": accessor.id, "datetime": accessor.info.datetime, "geometry_id": gid, "geometry": g,
                "band": band, "data": r.data[i], "valid": r.valid, "transform": r.transform, "crs": r.crs,
                "nodata": r.nodata,
            })
    crs = _crs_string(geometry_crs)
    if not rows:
        return gpd.GeoDataFrame({"record_id": [], "geometry_id": [], "band": [], "data": []}, geometry=[], crs=crs)
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


async def load_bands_output(accessor: Any, geometries: Any, band_codes: list[str], *, max_concurrent: int = 50,
                            for_xarray: bool = True, backend: Any = None, target_crs: Any = None,
                            output: str | None = None, **options: Any) -> Any:
    """RasterAccessor.load_bands: read, optionally warp to target_crs, shape the result."""
    results = await read_accessor(accessor, geometries, band_codes, max_concurrent=max_concurrent,
                                  backend=backend, **options)
    if target_crs is not None:
        from .warp import warp_results

        results = warp_results(results, target_crs)
    if output == "results":
        return results
    if for_xarray:
        return to_xarray(accessor, results)
    return to_geodataframe(accessor, geometries, results, options.get("geometry_crs", 4326))


__all__ = ["RasterduckError", "load_bands_output", "read_accessor", "to_geodataframe", "to_xarray"]
