-- The demo's generated history (simulators/backfill.py), in two parts: the cases (and
-- patrol tracks, inspections) before the hub starts, the sensors' past readings beside the
-- running hub. Each part stamps its row when done, so a second start of `./hubctl demo`
-- skips what is there at the cost of one query.
CREATE TABLE demo_history (
    id                smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),  -- one per town
    days              real NOT NULL,
    seed              bigint NOT NULL,
    since             timestamptz NOT NULL,
    until             timestamptz NOT NULL,
    cases             integer NOT NULL,
    positions         bigint NOT NULL,
    cases_done_at     timestamptz NOT NULL DEFAULT now(),
    telemetry         bigint,
    readings_done_at  timestamptz
);
