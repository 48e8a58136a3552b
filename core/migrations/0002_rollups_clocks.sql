-- Rollups that charts and reports read instead of raw rows, built incrementally by the
-- hub's own scheduled jobs (hub/jobs.py) with time_bucket, so they work on every
-- TimescaleDB edition (continuous aggregates need the licensed one).
CREATE TABLE telemetry_1m (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       double precision NOT NULL,
    count     bigint NOT NULL,
    avg       double precision GENERATED ALWAYS AS (sum / count) STORED,
    PRIMARY KEY (device_id, metric, bucket)
);
SELECT create_hypertable('telemetry_1m', 'bucket', chunk_time_interval => interval '7 days');

CREATE TABLE telemetry_1h (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    sum       double precision NOT NULL,
    count     bigint NOT NULL,
    avg       double precision GENERATED ALWAYS AS (sum / count) STORED,
    PRIMARY KEY (device_id, metric, bucket)
);
SELECT create_hypertable('telemetry_1h', 'bucket', chunk_time_interval => interval '30 days');

-- How far each rollup has been built (buckets before done_until are final unless data
-- arrives later than the rollup's look-back).
CREATE TABLE rollup_progress (
    name       text PRIMARY KEY,
    done_until timestamptz NOT NULL
);

-- Device clocks: received time minus device time, smoothed; a device whose clock is off
-- beyond a setting is flagged, not silently trusted.
CREATE TABLE device_clocks (
    device_id   text PRIMARY KEY,
    skew_s      double precision NOT NULL,   -- smoothed received_at - device time
    last_skew_s double precision NOT NULL,
    samples     bigint NOT NULL,
    late        bigint NOT NULL DEFAULT 0,   -- readings older than the reorder window
    flagged     boolean NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
