-- After-action replay (hub/replay_store.py): the console's open picture, saved every
-- HUB_REPLAY_SNAPSHOT_S by the dispatch leader. Replaying a past time starts from the
-- latest of these at or before it and folds the events (and unit fixes) after it, so a
-- seek never has to fold the events table from its beginning.
CREATE TABLE replay_snapshots (
    id        bigserial PRIMARY KEY,
    taken_at  timestamptz NOT NULL,
    -- The picture holds every event up to and including this one (events.seq).
    seq       bigint NOT NULL,
    -- {"alarms": {id: alarm}, "incidents": {id: incident}, "units": {id: unit}}: the views
    -- of core/entities.py, as the live feed's snapshot carries them.
    state     jsonb NOT NULL
);
CREATE INDEX replay_snapshots_taken ON replay_snapshots (taken_at);
