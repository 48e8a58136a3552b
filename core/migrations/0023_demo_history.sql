-- The demo's generated history (simulators/backfill.py): one row once the backfill has
-- finished, so a second start of `./hubctl demo` skips it at the cost of one query.
CREATE TABLE demo_history (
    id           smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),  -- one history per town
    days         real NOT NULL,
    seed         bigint NOT NULL,
    since        timestamptz NOT NULL,
    until        timestamptz NOT NULL,
    cases        integer NOT NULL,
    telemetry    bigint NOT NULL,
    positions    bigint NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
