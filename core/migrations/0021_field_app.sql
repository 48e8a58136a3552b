-- The field app (issue 14): phones enrolled by one-time codes, grid workers' tokens,
-- evidence photos and idempotent requests from phones that were offline.

-- A grid worker's phone holds a token of its own role, bound (like a unit's) to its unit
-- (a unit of type grid_worker): it may report, patrol and verify in its own grids only.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('viewer', 'operator', 'supervisor', 'admin', 'unit', 'grid_worker'));
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_unit_check
    CHECK ((role IN ('unit', 'grid_worker')) = (unit_id IS NOT NULL));

-- One-time enrolment codes (kept as SHA-256, like every secret): an admin shows one as a
-- QR code, the phone trades it once, before it expires, for its own token.
CREATE TABLE field_enrolments (
    id          bigserial PRIMARY KEY,
    code_hash   bytea NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('unit', 'grid_worker')),
    unit_id     text NOT NULL REFERENCES units (id),
    grids       text[] NOT NULL DEFAULT '{}',   -- a grid worker's grids (level 2)
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    phone_name  text                             -- the token name it became
);

-- Enrolled phones: one per token name (api_tokens.name), revoked with the token.
CREATE TABLE field_phones (
    name        text PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('unit', 'grid_worker')),
    unit_id     text NOT NULL REFERENCES units (id),
    grids       text[] NOT NULL DEFAULT '{}',
    enrolment   bigint NOT NULL REFERENCES field_enrolments (id),
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    revoked_by  text
);

-- Evidence photos, content-addressed: the file is var/<env>/photos/<sha[:2]>/<sha>
-- (the bytes as received) and the shown copies (metadata stripped, resized) beside it.
CREATE TABLE photos (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    mime        text NOT NULL,
    bytes       integer NOT NULL,
    width       integer NOT NULL,
    height      integer NOT NULL,
    taken_at    timestamptz,                     -- EXIF DateTimeOriginal (phone's clock)
    lon         double precision,                -- EXIF GPS, when the camera wrote it
    lat         double precision,
    uploaded_by text NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now()
);

-- Which photos back which case step; log_seq is the case-log entry that names their
-- hashes (so a swapped file or row breaks the check, a changed entry the chain).
CREATE TABLE incident_photos (
    incident_id bigint NOT NULL REFERENCES incidents (id),
    sha256      text NOT NULL REFERENCES photos (sha256),
    stage       text NOT NULL CHECK (stage IN ('report', 'feedback', 'verify')),
    log_seq     integer NOT NULL,
    added_by    text NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, sha256, stage)
);
CREATE INDEX incident_photos_sha ON incident_photos (sha256);

-- Requests from phones carry an idempotency key (the phone queues them while offline and
-- may send one twice); the first answer is kept and given again for the same key.
CREATE TABLE field_requests (
    principal   text NOT NULL,
    key         text NOT NULL,
    path        text NOT NULL,
    status      integer NOT NULL,
    response    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX field_requests_created ON field_requests (created_at);
