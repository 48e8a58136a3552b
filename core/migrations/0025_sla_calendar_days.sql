-- Working-calendar days edited by supervisors through the API (hub/sla_api.py), laid over
-- the calendar file (dispatch/data/calendar_cn.toml or the town's HUB_CALENDAR_FILE), which
-- stays the seed: a row here decides what its date is, whatever the file says.
CREATE TABLE sla_calendar_days (
    day date PRIMARY KEY,
    -- 'holiday': a day off; 'workday': an adjusted working day (调休, a weekend day worked);
    -- 'normal': the file's entry for this date removed (the date follows its weekday).
    kind text NOT NULL CHECK (kind IN ('holiday', 'workday', 'normal')),
    name text NOT NULL DEFAULT '',
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Each edit is also appended to sla_config_log (target 'calendar:YYYY-MM-DD') with its actor.
