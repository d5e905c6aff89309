-- Statistics of the valid pixels of one band of a load_bands result (NULL when none is valid).
--   SELECT masked_mean(px, 'b1'), masked_min(px, 'b1'), masked_max(px, 'b1') FROM (SELECT load_bands(...) px ...)
CREATE OR REPLACE MACRO masked_mean(res, name) AS list_avg(masked_values(res, name));
CREATE OR REPLACE MACRO masked_min(res, name) AS list_min(masked_values(res, name));
CREATE OR REPLACE MACRO masked_max(res, name) AS list_max(masked_values(res, name));
CREATE OR REPLACE MACRO masked_sum(res, name) AS list_sum(masked_values(res, name));
