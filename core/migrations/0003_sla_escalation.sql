-- SLA clocks: one row per incident and stage. Deadlines live here, so the in-process timer
-- heap (dispatch/clocks.py) can be rebuilt at start; warned_at / breached_at record that the
-- event fired, and the conditional UPDATE that sets them makes each fire exactly once.
CREATE TABLE sla_clocks (
    incident_id  bigint NOT NULL REFERENCES incidents (id),
    stage        text NOT NULL CHECK (stage IN ('register', 'dispatch', 'accept', 'arrive',
                                                'resolve')),
    started_at   timestamptz NOT NULL,
    deadline     timestamptz,              -- NULL while the clock is paused
    warn_at      timestamptz,
    met_at       timestamptz,              -- the stage was done
    warned_at    timestamptz,
    breached_at  timestamptz,
    PRIMARY KEY (incident_id, stage)
);
CREATE INDEX sla_clocks_pending ON sla_clocks (deadline)
    WHERE met_at IS NULL AND breached_at IS NULL;

-- The live SLA picture of an incident travels with its view (events, snapshot):
-- {stage: {"deadline": s|null, "met_at": s|null, "state": "ok|warning|breached"}}.
ALTER TABLE incidents ADD COLUMN sla jsonb NOT NULL DEFAULT '{}';
-- The last case-log hash, kept beside the chain: deleting the newest entries breaks the
-- match, which the chain alone cannot show.
ALTER TABLE incidents ADD COLUMN log_head text;

-- An assignment must be signed for (accepted) by this time, or it is escalated: given to
-- the next candidate, and the supervisor alerted.
ALTER TABLE assignments ADD COLUMN accept_due timestamptz;
ALTER TABLE assignments ADD COLUMN escalated_at timestamptz;
ALTER TABLE assignments DROP CONSTRAINT assignments_status_check;
ALTER TABLE assignments ADD CONSTRAINT assignments_status_check
    CHECK (status IN ('active', 'accepted', 'declined', 'superseded', 'escalated',
                      'preempted', 'done'));
CREATE INDEX assignments_accept_due ON assignments (accept_due) WHERE status = 'active';

-- Supervisor alerts (escalations, breaches needing a person).
CREATE TABLE supervisor_alerts (
    id           bigserial PRIMARY KEY,
    incident_id  bigint REFERENCES incidents (id),
    kind         text NOT NULL,
    message      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    acked_by     text,
    acked_at     timestamptz
);
