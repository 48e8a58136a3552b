-- SLA limits edited by supervisors through the API (hub/sla_api.py), laid over the limits
-- file (dispatch/data/sla_limits.toml or the town's HUB_SLA_FILE). A row here wins over
-- the file's row for the same (category, priority); deleting it goes back to the file.
CREATE TABLE sla_limits (
    category text NOT NULL,                 -- '*': every category
    priority smallint NOT NULL CHECK (priority BETWEEN 1 AND 4),
    register_s double precision NOT NULL CHECK (register_s > 0),
    dispatch_s double precision NOT NULL CHECK (dispatch_s >= register_s),
    accept_s double precision NOT NULL CHECK (accept_s >= dispatch_s),
    arrive_s double precision NOT NULL CHECK (arrive_s >= accept_s),
    resolve_s double precision NOT NULL CHECK (resolve_s > 0),
    resolve_working boolean NOT NULL,       -- resolve_s is working time of the calendar
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (category, priority)
);

-- Other SLA options edited through the API (today: warn_share), laid over the file's.
CREATE TABLE sla_options (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every change, append-only: who (the authenticated principal), when, what before and after.
CREATE TABLE sla_config_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    target text NOT NULL,                   -- 'limits:<category>:<priority>' or 'warn_share'
    before jsonb,                           -- null: the file's value was in force
    after jsonb                             -- null: back to the file's value
);
