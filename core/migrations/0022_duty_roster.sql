-- The duty roster of the administration pages (hub/admin_units.py, hub/admin_roster.py):
-- shifts per unit (local times of the town, by ISO weekday), every change of duty by hand
-- or by schedule with its handover note, and the schedule's last verdict per unit (the
-- schedule acts at its boundaries only, so a change by hand holds until the next one).
CREATE TABLE unit_shifts (
    id          bigserial PRIMARY KEY,
    unit_id     text NOT NULL REFERENCES units (id),
    weekdays    smallint[] NOT NULL CHECK (weekdays <@ ARRAY[1,2,3,4,5,6,7]::smallint[]
                                           AND cardinality(weekdays) > 0),
    starts      time NOT NULL,            -- local time; ends <= starts: the shift ends
    ends        time NOT NULL,            -- the next day (a night shift)
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX unit_shifts_unit ON unit_shifts (unit_id);

CREATE TABLE unit_duty_log (
    id        bigserial PRIMARY KEY,
    unit_id   text NOT NULL REFERENCES units (id),
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,              -- the logged-in principal, or 'schedule'
    on_duty   boolean NOT NULL,
    source    text NOT NULL CHECK (source IN ('hand', 'schedule')),
    note      text NOT NULL DEFAULT ''    -- the handover note
);
CREATE INDEX unit_duty_log_unit ON unit_duty_log (unit_id, at DESC);

CREATE TABLE unit_duty_schedule (
    unit_id    text PRIMARY KEY REFERENCES units (id),
    on_duty    boolean NOT NULL,          -- what the shifts said at the last check
    applied_at timestamptz NOT NULL DEFAULT now()
);
