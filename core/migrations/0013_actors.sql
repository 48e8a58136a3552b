-- Every step attributable (issue 12): the security audit trail, who last changed an alarm
-- rule, and login throttling per (username, client address).
--
-- security_events: logins, failed and throttled logins, sessions ended, users created or
-- changed (role changes), API tokens created or revoked, MQTT accounts provisioned,
-- rotated or revoked, alarm rules changed. Append-only; read by supervisors and admins (GET /api/audit).
-- ``actor`` is the authenticated principal who did it ("cli:<os user>" for the command
-- line, the attempted username for a failed login); ``target`` what it was done to.
CREATE TABLE security_events (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    kind      text NOT NULL CHECK (kind ~ '^[a-z_]+\.[a-z_]+$'),
    actor     text NOT NULL,
    target    text,
    client_ip text,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX security_events_at ON security_events (at);
CREATE INDEX security_events_kind_at ON security_events (kind, at);
CREATE INDEX security_events_actor_at ON security_events (actor, at);

-- The throttle counts failures per (username, client address): one index for that pair.
CREATE INDEX login_failures_user_ip ON login_failures (username, client_ip, at);

-- Who last changed a rule; every change is also in security_events (rule.changed,
-- rule.disabled) with the rule as it became, so the history is kept.
ALTER TABLE rules ADD COLUMN updated_by text;
