-- gridhub foundation schema. Times are timestamptz (UTC); ids of registry entities are
-- human-readable text (G01-03, ENV-0001, SQ-01) because operators read them on screen.

-- ---------------------------------------------------------------- the town
CREATE TABLE town (
    key   text PRIMARY KEY,             -- 'meta': name, command centre, centre point
    value jsonb NOT NULL
);

CREATE TABLE grids (
    id         text PRIMARY KEY,
    level      smallint NOT NULL CHECK (level IN (1, 2)),
    parent_id  text REFERENCES grids (id),
    name       text NOT NULL,
    zone       text,
    geometry   jsonb NOT NULL,           -- GeoJSON Polygon
    -- Bounding box and centroid: point-in-grid look-ups and map labels without PostGIS.
    min_lon double precision NOT NULL, min_lat double precision NOT NULL,
    max_lon double precision NOT NULL, max_lat double precision NOT NULL,
    center_lon double precision NOT NULL, center_lat double precision NOT NULL,
    CHECK ((level = 1) = (parent_id IS NULL))
);

CREATE TABLE roads (
    id        text PRIMARY KEY,
    name      text NOT NULL,
    class     text NOT NULL,
    speed_kmh real NOT NULL CHECK (speed_kmh > 0),
    geometry  jsonb NOT NULL             -- GeoJSON LineString
);

CREATE TABLE devices (
    id          text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('traffic', 'safety', 'environment')),
    model       text NOT NULL,
    name        text NOT NULL,
    lon         double precision NOT NULL,
    lat         double precision NOT NULL,
    grid_id     text NOT NULL REFERENCES grids (id),
    metrics     text[] NOT NULL DEFAULT '{}',
    interval_s  integer NOT NULL DEFAULT 60,
    props       jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX devices_grid ON devices (grid_id);

CREATE TABLE units (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    type            text NOT NULL CHECK (type IN ('squad', 'police', 'grid_worker')),
    qualifications  text[] NOT NULL DEFAULT '{}',
    home_grid       text NOT NULL REFERENCES grids (id),
    members         integer NOT NULL DEFAULT 1,
    status          text NOT NULL DEFAULT 'available'
                    CHECK (status IN ('available', 'dispatched', 'en_route', 'on_scene',
                                      'returning', 'off_duty')),
    duty_since      timestamptz,
    current_incident bigint,
    -- Latest GPS fix; a late fix never overwrites a newer one (see ingest writer).
    lon             double precision,
    lat             double precision,
    speed           real,
    heading         real,
    position_ts     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- time series
CREATE TABLE telemetry (
    ts          timestamptz NOT NULL,       -- device time: the time of record
    device_id   text NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    received_at timestamptz NOT NULL,
    late        boolean NOT NULL DEFAULT false
);
SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => interval '1 day');
-- The idempotency key: a redelivered reading hits this and is dropped (ON CONFLICT DO NOTHING).
-- It also serves "range per device" and, read backwards, "latest per device".
CREATE UNIQUE INDEX telemetry_key ON telemetry (device_id, metric, ts DESC);

CREATE TABLE positions (
    ts          timestamptz NOT NULL,
    unit_id     text NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    speed       real,
    heading     real,
    accuracy    real,
    received_at timestamptz NOT NULL
);
SELECT create_hypertable('positions', 'ts', chunk_time_interval => interval '1 day');
CREATE UNIQUE INDEX positions_key ON positions (unit_id, ts DESC);

CREATE TABLE telemetry_latest (
    device_id   text NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,
    value       double precision NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric)
);

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    payload     bytea NOT NULL,             -- truncated to a setting
    size        integer NOT NULL,           -- the original size
    reason      text NOT NULL,              -- stable code (ingest/wire.py ERROR_CODES, ...)
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at DESC);

-- ---------------------------------------------------------------- events
-- Every published fact has a row here, written in the same transaction as the fact; seq is
-- its global sequence number. Writers take a transaction-level advisory lock before
-- inserting, so seq order is commit order and a reader resuming "after seq N" misses nothing.
CREATE TABLE events (
    seq      bigserial PRIMARY KEY,
    ts       timestamptz NOT NULL DEFAULT now(),
    kind     text NOT NULL,
    payload  jsonb NOT NULL
);

-- ---------------------------------------------------------------- alarms
CREATE TABLE rules (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    kind                text NOT NULL,              -- threshold, duration, rate, nodata, geofence
    metric              text,
    device_model        text,                       -- NULL: any model carrying the metric
    params              jsonb NOT NULL DEFAULT '{}',
    severity            text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    incident_category   text,                       -- NULL: alarm only, no incident
    qualification       text,                       -- the department a case needs
    priority            smallint NOT NULL DEFAULT 3 CHECK (priority BETWEEN 1 AND 4),
    source              text NOT NULL DEFAULT '',   -- the standard a limit comes from
    enabled             boolean NOT NULL DEFAULT true,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alarms (
    id            bigserial PRIMARY KEY,
    rule_id       text NOT NULL REFERENCES rules (id),
    device_id     text NOT NULL,
    grid_id       text REFERENCES grids (id),
    severity      text NOT NULL,
    state         text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'acknowledged', 'cleared')),
    value         double precision,
    message       text NOT NULL DEFAULT '',
    raised_at     timestamptz NOT NULL,             -- device time of the reading that raised it
    last_seen     timestamptz NOT NULL,
    count         integer NOT NULL DEFAULT 1,
    acked_by      text,
    acked_at      timestamptz,
    cleared_at    timestamptz,
    cleared_by    text,
    clear_reason  text,
    incident_id   bigint
);
-- De-duplication in the database: one open alarm per (rule, device), whatever races in Python.
CREATE UNIQUE INDEX alarms_one_open ON alarms (rule_id, device_id) WHERE state <> 'cleared';
CREATE INDEX alarms_open ON alarms (state) WHERE state <> 'cleared';

-- ---------------------------------------------------------------- incidents and cases
CREATE TABLE incidents (
    id             bigserial PRIMARY KEY,
    category       text NOT NULL,
    priority       smallint NOT NULL CHECK (priority BETWEEN 1 AND 4),
    qualification  text NOT NULL,
    title          text NOT NULL,
    description    text NOT NULL DEFAULT '',
    lon            double precision NOT NULL,
    lat            double precision NOT NULL,
    grid_id        text REFERENCES grids (id),
    source         text NOT NULL,                  -- alarm, operator, grid_worker, hotline, open311
    reporter       text NOT NULL DEFAULT '',
    state          text NOT NULL,
    opened_at      timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    assigned_unit  text REFERENCES units (id),
    rework_count   integer NOT NULL DEFAULT 0,
    extension_count integer NOT NULL DEFAULT 0,
    handler        text,
    alarms_cleared boolean NOT NULL DEFAULT false
);
CREATE INDEX incidents_open ON incidents (state) WHERE state NOT IN ('archived', 'cancelled');
CREATE INDEX incidents_grid ON incidents (grid_id, category) WHERE state NOT IN ('archived', 'cancelled');
ALTER TABLE alarms ADD FOREIGN KEY (incident_id) REFERENCES incidents (id);
ALTER TABLE units ADD FOREIGN KEY (current_incident) REFERENCES incidents (id);

CREATE TABLE assignments (
    id              bigserial PRIMARY KEY,
    incident_id     bigint NOT NULL REFERENCES incidents (id),
    unit_id         text NOT NULL REFERENCES units (id),
    assigned_at     timestamptz NOT NULL,
    eta_s           double precision,
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'accepted', 'declined', 'superseded', 'done')),
    reason          text NOT NULL,
    override_reason text,
    -- The ranked candidates and why the pick: every recommendation is kept.
    recommendation  jsonb NOT NULL DEFAULT '{}'
);
-- One live assignment per incident: a case is never dispatched twice.
CREATE UNIQUE INDEX assignments_one_live ON assignments (incident_id) WHERE status IN ('active', 'accepted');

-- Append-only case log, one hash chain per incident (dispatch/workflow.py entry_hash).
CREATE TABLE case_log (
    id          bigserial PRIMARY KEY,
    incident_id bigint NOT NULL REFERENCES incidents (id),
    seq         integer NOT NULL,
    action      text NOT NULL,
    from_state  text,
    to_state    text NOT NULL,
    actor       text NOT NULL,
    ts          timestamptz NOT NULL,
    reason      text,
    prev_hash   text NOT NULL,
    hash        text NOT NULL,
    UNIQUE (incident_id, seq)
);
