-- SDP silver: bronze lines parsed with the entity's declared columns; a line that does not parse,
-- or lacks a key or its event time, is dropped; per key the row with the latest event time.
-- A template: bench/pipeline_vs_sdp.py fills in the dollar placeholders (schema, columns, keys,
-- key checks, event time) from conf/<env>/entities/telemetry.yml. A materialized view (recomputed
-- from all of bronze each run): a Python flow cannot use withWatermark/dropDuplicates on a
-- pipeline table (TABLE_OR_VIEW_NOT_FOUND when the graph is defined).
CREATE MATERIALIZED VIEW silver_telemetry
COMMENT 'telemetry parsed with the declared columns, the latest event time per key'
AS SELECT $columns FROM (
  SELECT r.*, row_number() OVER (PARTITION BY $keys ORDER BY r.$event_time DESC, _source_file DESC) AS _rank
  FROM (SELECT from_json(value, '$schema') AS r, _source_file FROM bronze_telemetry)
  WHERE $keys_present AND r.$event_time IS NOT NULL)
WHERE _rank = 1
