-- Alarm internals that hold under storms, restarts and late data (issue 13).
--
-- Members of a grouped alarm: a storm situation (devices of one grid silent together) or a
-- rule over its raise cap. The group is one row in `alarms` (device_id = its key, also in
-- `situation`); every device in it is a row here, so nothing an operator should see is
-- lost: `alarms.members` is the count of open members, the rows say which.
CREATE TABLE alarm_members (
    alarm_id    bigint NOT NULL REFERENCES alarms (id),
    device_id   text NOT NULL,
    grid_id     text,
    value       double precision,
    message     text NOT NULL DEFAULT '',
    raised_at   timestamptz NOT NULL,
    cleared_at  timestamptz,
    PRIMARY KEY (alarm_id, device_id)
);
CREATE INDEX alarm_members_open ON alarm_members (alarm_id) WHERE cleared_at IS NULL;

-- The alarm watch's own memory besides per-rule states (ingest/watch.py): flapping, storm
-- windows, rate caps and re-alarm timers, one JSON document per part, so a restart
-- continues them.
CREATE TABLE watch_state (
    part        text PRIMARY KEY,
    state       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Late readings for the rollups (ingest/retention.py): the readings that arrived long after
-- their device time (store-and-forward batches), found by receive time without scanning
-- the table. Partial: only the few delayed rows are indexed, the hot path pays a compare.
CREATE INDEX telemetry_delayed ON telemetry (received_at)
    WHERE received_at - ts > interval '5 minutes';
