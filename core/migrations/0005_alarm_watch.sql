-- Alarm rules at full strength: persisted rule state (so a restart neither re-fires an
-- active alarm nor forgets a pending duration), flapping and storm grouping on alarms,
-- suppression counts per rule, device filters and active hours on rules, and the grids a
-- unit patrols (its geofence).
CREATE TABLE rule_state (
    rule_id    text NOT NULL,
    subject    text NOT NULL,            -- device id, or unit id for geofence rules
    state      jsonb NOT NULL,           -- ingest.rules.RuleState.to_json()
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, subject)
);

ALTER TABLE rules ADD COLUMN device_filter jsonb NOT NULL DEFAULT '{}';  -- match device props
ALTER TABLE rules ADD COLUMN hours text;            -- local "HH:MM-HH:MM" the rule applies
ALTER TABLE rules ADD COLUMN applies_to text NOT NULL DEFAULT 'devices'
    CHECK (applies_to IN ('devices', 'units'));
ALTER TABLE rules ADD COLUMN suppressed_total bigint NOT NULL DEFAULT 0;

ALTER TABLE alarms ADD COLUMN flapping boolean NOT NULL DEFAULT false;
ALTER TABLE alarms ADD COLUMN situation text;       -- storm group key ("storm:<grid>")
ALTER TABLE alarms ADD COLUMN members integer;      -- devices in a situation alarm

ALTER TABLE units ADD COLUMN patrol_grids text[] NOT NULL DEFAULT '{}';
-- Default patrol area: every second-level grid of the unit's first-level grid.
UPDATE units u SET patrol_grids = ARRAY(
    SELECT c.id FROM grids h JOIN grids c ON c.parent_id = h.parent_id
    WHERE h.id = u.home_grid ORDER BY c.id);
