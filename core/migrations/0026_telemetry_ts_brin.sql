-- telemetry's time index as BRIN instead of TimescaleDB's default B-tree (ts DESC).
--
-- Every stored reading paid for a B-tree entry that only time-range scans over all
-- devices read (the minute rollup, the ingest-rate tile): ~1 µs of PostgreSQL CPU and
-- ~70 bytes of WAL per reading, measured with the batched writer's COPY (docs/PERFORMANCE.md,
-- batched ingest). Readings arrive in roughly time order, so a chunk's heap is nearly sorted
-- by ts and a block-range index (a few bytes per 128 pages) finds a range as well for those
-- scans. Per-device reads keep the unique key (device_id, metric, ts DESC).
-- autosummarize: a filled block range is summarised by autovacuum soon after, rather than
-- scanned by every range query until the next vacuum of the chunk.
DROP INDEX IF EXISTS telemetry_ts_idx;
CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts) WITH (autosummarize = on);
