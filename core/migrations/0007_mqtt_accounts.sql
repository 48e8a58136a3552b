-- MQTT accounts: one per device, patrol unit, gateway and hub service. Mosquitto's password
-- file and ACL file are rendered from this table (hub/mqtt_accounts.py) and the broker
-- re-reads them on SIGHUP. Numbered 0007: 0006 is the operators' users and sessions.
CREATE TABLE mqtt_accounts (
    -- The MQTT username: a device id, a unit id, or a gateway/service name. The wire id rule
    -- without ':' (Mosquitto's password file is "user:hash"), and never '+', '#' or '/'
    -- (an old Mosquitto CVE let such usernames widen %u ACL patterns).
    principal     text PRIMARY KEY CHECK (principal ~ '^[A-Za-z0-9_.-]{1,64}$'),
    kind          text NOT NULL CHECK (kind IN ('device', 'unit', 'gateway', 'service')),
    -- Mosquitto's PBKDF2-SHA512 format: $7$iterations$salt_b64$hash_b64. Never the password.
    password_hash text NOT NULL CHECK (password_hash LIKE '$7$%'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    rotated_at    timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX mqtt_accounts_kind ON mqtt_accounts (kind) WHERE revoked_at IS NULL;
