"""Reference of rasterduck's SQL functions and macros, each with an example that runs on the sample
collection shipped in `examples/sample` (attached as `sample`; see `.help functions` in the shell).

    con = rasterduck.connect()
    rasterduck.attach(con, "sample", "examples/sample/collection.parquet", allow_local=True)

The examples are executed by the test suite, so they stay true.
"""

from __future__ import annotations

from dataclasses import dataclass

AOI = "'POLYGON((-57.9 73.45,-57.6 73.45,-57.55 73.6,-57.85 73.62,-57.9 73.45))'"
POINT = "'POINT(-57.7 73.5)'"
ONE = "FROM sample r WHERE r.id = 'greenland-u16'"
PX = f"(SELECT load_bands(r, {AOI}, ['b1']) AS px {ONE})"


@dataclass(frozen=True)
class Entry:
    """One function or macro: call signature, what it returns, a runnable example."""

    signature: str
    returns: str
    example: str


FUNCTIONS: list[Entry] = [
    Entry("load_bands(record, geom, bands[, geom_crs])",
          "STRUCT(bands VARCHAR[], height INTEGER, width INTEGER, transform DOUBLE[], crs VARCHAR, dtype VARCHAR, "
          "nodata DOUBLE, data T[][], valid BOOLEAN[]): the AOI's window, pixels outside the AOI set to nodata "
          "(else 0); T follows the attached collections (uint16 -> USMALLINT); NULL when the AOI misses",
          f"SELECT r.id, load_bands(r, {AOI}, ['b1']) AS px FROM sample r WHERE raster_intersects(r, {AOI})"),
    Entry("load_bands_safe(record, geom, bands[, geom_crs])",
          "the load_bands STRUCT plus error VARCHAR: a failing row gives NULL fields and the error text",
          f"SELECT r.id, (load_bands_safe(r, {AOI}, ['b1', 'nir'])).error FROM sample r"),
    Entry("load_bands_u8 | _i8 | _u16 | _i16 | _u32 | _i32 | _u64 | _i64 | _f32 | _f64(record, geom, bands[, geom_crs])",
          "load_bands with a fixed pixel type (widening casts only)",
          f"SELECT typeof(load_bands_f32(r, {AOI}, ['b1'])) {ONE}"),
    Entry("load_bands_raw(record, geom, bands[, geom_crs]) / load_bands_raw_safe",
          "the load_bands STRUCT with data BLOB[] (each band's pixels as little-endian bytes of `dtype`, "
          "row-major) and valid BLOB (a byte per pixel, 1 = valid): several times cheaper to fetch than lists "
          "for large results, and every row keeps its native dtype; rasterduck.to_numpy reads it too",
          f"SELECT px.dtype, octet_length(px.data[1]) AS nbytes, px.height * px.width AS pixels "
          f"FROM (SELECT load_bands_raw(r, {AOI}, ['b1']) AS px {ONE})"),
    Entry("zonal_stats(record, geom, band[, geom_crs])",
          "STRUCT(count, valid_count, min, max, mean, std, sum) of the valid pixels inside the AOI",
          f"SELECT zonal_stats(r, {AOI}, 'b1') {ONE}"),
    Entry("pixel_values(record, point, bands[, geom_crs])", "DOUBLE[]: the pixel under the point per band (NULL = nodata)",
          f"SELECT pixel_values(r, {POINT}, ['b1']) {ONE}"),
    Entry("raster_intersects(record, geom[, geom_crs])", "BOOLEAN: the AOI meets the record's footprint",
          f"SELECT r.id, raster_intersects(r, {AOI}) FROM sample r"),
    Entry("read_cog_metadata(href[, band_index])", "the {band}_metadata STRUCT of one sample of a COG",
          "SELECT (read_cog_metadata(r.assets.b1.href)).image_width FROM sample r"),
    Entry("read_cog_crs(href)", "VARCHAR: 'EPSG:n' (or WKT) of a COG", "SELECT read_cog_crs(r.assets.b1.href) FROM sample r"),
    Entry("rasterduck_set(name, value)", "VARCHAR: changes a setting; 'pixel_budget' takes '512MB', '2GiB' or 'none'",
          "SELECT rasterduck_set('pixel_budget', '256MB')"),
    Entry("RS_Intersects(raster, geom)", "raster_intersects under Apache Sedona's name",
          f"SELECT RS_Intersects(r, {AOI}) {ONE}"),
    Entry("RS_Value(raster, point[, band])", "DOUBLE: the pixel under the point (band: 1-based number or name)",
          f"SELECT RS_Value(r, {POINT}, 1) {ONE}"),
    Entry("RS_ZonalStats(raster, zone[, band], statType[, allTouched[, excludeNoData[, lenient]]])",
          "DOUBLE: count, sum, mean, median, mode, stddev, variance, min or max",
          f"SELECT RS_ZonalStats(r, {AOI}, 1, 'median') {ONE}"),
    Entry("RS_ZonalStatsAll(raster, zone[, band[, allTouched[, excludeNoData[, lenient]]]])",
          "STRUCT(count, sum, mean, median, mode, stddev, variance, min, max)",
          f"SELECT RS_ZonalStatsAll(r, {AOI}) {ONE}"),
    Entry("RS_BandAsArray(raster, band)", "DOUBLE[]: the whole band, row-major",
          "SELECT len(RS_BandAsArray(r, 1)) FROM sample r WHERE r.id = 'quebec-u16'"),
    Entry("RS_Width / RS_Height / RS_NumBands / RS_SRID(raster)", "INTEGER facts of the record's first band",
          "SELECT RS_Width(r), RS_Height(r), RS_NumBands(r), RS_SRID(r) FROM sample r"),
]

MACROS: list[Entry] = [
    Entry("band(res, name)", "T[]: one band's pixels of a load_bands result", f"SELECT len(band(px, 'b1')) FROM {PX}"),
    Entry("masked_values(res, name)", "T[]: the valid pixels of one band", f"SELECT len(masked_values(px, 'b1')) FROM {PX}"),
    Entry("valid_count(res)", "BIGINT: valid pixels of the window", f"SELECT valid_count(px) FROM {PX}"),
    Entry("masked_mean / masked_min / masked_max / masked_sum(res, name)", "statistics of the valid pixels",
          f"SELECT masked_mean(px, 'b1'), masked_min(px, 'b1'), masked_max(px, 'b1') FROM {PX}"),
    Entry("normalized_difference(res, a, b) / ndvi(res, nir, red)", "DOUBLE[]: (a - b) / (a + b), NULL where invalid",
          f"SELECT len(ndvi(px, 'b1', 'b1')) FROM {PX}"),
    Entry("mean_ndvi(res, nir, red)", "DOUBLE: mean NDVI over the valid pixels", f"SELECT mean_ndvi(px, 'b1', 'b1') FROM {PX}"),
]


def help_text() -> str:
    """The reference as plain text (the shell's `.help functions`)."""
    out = ["Functions (record = a collection row, `r` in FROM collection r; geom in EPSG:4326 unless geom_crs):"]
    for e in FUNCTIONS:
        out += [f"  {e.signature}", f"      {e.returns}", f"      e.g. {e.example}"]
    out.append("Macros over a load_bands result `res`:")
    for e in MACROS:
        out += [f"  {e.signature}", f"      {e.returns}", f"      e.g. {e.example}"]
    return "\n".join(out)
