-- The main job: join a collection of COGs with your fields and pull the pixels, in SQL.
-- Run:  rasterduck sql --attach sample=examples/sample/collection.parquet --allow-local -f examples/quickstart.sql
CREATE OR REPLACE TABLE aoi AS
    SELECT field_id, wkt::GEOMETRY AS geom FROM read_csv('examples/sample/aois.csv');

-- which fields touch which scenes, and their pixels (uint16 stays USMALLINT)
SELECT aoi.field_id, r.id,
       px.height, px.width, px.dtype, valid_count(px) AS valid_pixels,
       masked_min(px, 'b1') AS min, round(masked_mean(px, 'b1'), 1) AS mean, masked_max(px, 'b1') AS max
FROM sample r
JOIN aoi ON raster_intersects(r, aoi.geom),
LATERAL (SELECT load_bands(r, aoi.geom, ['b1']) AS px)
ORDER BY aoi.field_id;

-- the same numbers without shipping pixels to SQL
SELECT field_id, id, s.valid_count, s.min, round(s.mean, 1) AS mean, round(s.std, 1) AS std
FROM (SELECT aoi.field_id, r.id, zonal_stats(r, aoi.geom, 'b1') AS s
      FROM sample r JOIN aoi ON raster_intersects(r, aoi.geom))
ORDER BY field_id;
