-- Macros over a load_bands result `res` (STRUCT(bands, height, width, transform, crs, dtype, nodata,
-- data T[][], valid BOOLEAN[])). Created by rasterduck.register() in the database's main schema.
--
-- A macro argument is pasted into the macro body wherever it appears, and DuckDB may evaluate it once per
-- appearance -- inside a lambda, once per pixel. So every macro first binds `res` to a lambda parameter
-- with `list_transform([res], lambda r: ...)[1]` (one evaluation per row) and pairs lists with list_zip
-- instead of indexing a captured list per element (quadratic in DuckDB 1.5).

-- band(res, name): the pixels of one band, row-major, by band name (NULL when the band is absent).
--   SELECT band(load_bands(r, aoi.geom, ['red', 'nir']), 'nir') FROM ...
CREATE OR REPLACE MACRO band(res, name) AS
    (list_transform([res], lambda r: r.data[list_position(r.bands, name)]))[1];

-- masked_values(res, name): the valid pixels of one band (inside the AOI and not nodata).
CREATE OR REPLACE MACRO masked_values(res, name) AS
    (list_transform([res], lambda r: list_transform(
        list_filter(list_zip(r.data[list_position(r.bands, name)], r.valid), lambda t: t[2]),
        lambda t: t[1])))[1];

-- valid_count(res): how many pixels of the window are valid.
CREATE OR REPLACE MACRO valid_count(res) AS len(list_filter(res.valid, lambda v: v));
