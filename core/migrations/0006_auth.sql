-- Authentication: people log in (users + server-side sessions), machines and patrol phones
-- present API tokens; failed logins are counted in the database so that the limit holds
-- across several web nodes. Secrets are never stored: passwords as Argon2 hashes, session
-- ids and tokens as SHA-256 of a random value (enough for 256-bit random secrets, and a
-- lookup by primary key).
CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    display_name  text NOT NULL DEFAULT '',
    password_hash text NOT NULL,                   -- argon2id, PHC string
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'supervisor', 'admin')),
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id_hash      bytea PRIMARY KEY,                -- sha256 of the cookie value
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

CREATE TABLE api_tokens (
    id           bigserial PRIMARY KEY,
    token_hash   bytea NOT NULL UNIQUE,            -- sha256 of the token
    name         text NOT NULL,
    role         text NOT NULL
        CHECK (role IN ('viewer', 'operator', 'supervisor', 'admin', 'unit')),
    unit_id      text,                             -- the patrol phone's unit (role 'unit')
    created_by   text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CHECK ((role = 'unit') = (unit_id IS NOT NULL))
);
CREATE INDEX api_tokens_name ON api_tokens (name);

CREATE TABLE login_failures (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    username  text NOT NULL,
    client_ip text NOT NULL
);
CREATE INDEX login_failures_user ON login_failures (username, at);
CREATE INDEX login_failures_ip ON login_failures (client_ip, at);
