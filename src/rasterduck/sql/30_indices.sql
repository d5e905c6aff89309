-- Band indices over a load_bands result holding both bands (see 10_bands.sql for the binding idiom).

-- normalized_difference(res, a, b): (a - b) / (a + b) per pixel as DOUBLE[]; NULL where the pixel is
-- not valid or a + b = 0.
CREATE OR REPLACE MACRO normalized_difference(res, a, b) AS
    (list_transform([res], lambda r: list_transform(
        list_zip(r.data[list_position(r.bands, a)], r.data[list_position(r.bands, b)], r.valid),
        lambda t: CASE WHEN t[3] AND t[1]::DOUBLE + t[2]::DOUBLE <> 0
                       THEN (t[1]::DOUBLE - t[2]::DOUBLE) / (t[1]::DOUBLE + t[2]::DOUBLE) END)))[1];

-- ndvi(res, nir, red): the normalized difference vegetation index, e.g. ndvi(px, 'B08', 'B04').
CREATE OR REPLACE MACRO ndvi(res, nir, red) AS normalized_difference(res, nir, red);

-- mean_ndvi(res, nir, red): the mean NDVI over the valid pixels.
CREATE OR REPLACE MACRO mean_ndvi(res, nir, red) AS list_avg(ndvi(res, nir, red));
