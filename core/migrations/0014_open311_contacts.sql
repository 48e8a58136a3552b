-- Citizens' contact data kept apart from cases (hub/contacts.py), Open311 client
-- applications' API keys (hub/open311_keys.py) and what an Open311 report carried besides
-- the case itself (hub/open311.py).

-- Name, phone, e-mail, device id of whoever filed a report. The case, its public views and
-- the hash-chained case log know only the opaque id. Erasure (retention job, or at once)
-- blanks the fields and stamps erased_at: the row stays as a tombstone, so references and
-- the case-log chain (which never held these fields) stay intact.
CREATE TABLE contacts (
    id           text PRIMARY KEY,           -- opaque random id, e.g. c_3f9a...
    first_name   text,
    last_name    text,
    phone        text,
    email        text,
    device_id    text,
    collected_at timestamptz NOT NULL DEFAULT now(),
    erase_after  timestamptz NOT NULL,
    erased_at    timestamptz
);
CREATE INDEX contacts_due ON contacts (erase_after) WHERE erased_at IS NULL;

-- One key per client application, issued and revoked by an admin. Only the key's SHA-256
-- is stored; the key is shown once when issued.
CREATE TABLE open311_keys (
    id           bigserial PRIMARY KEY,
    app_name     text NOT NULL CHECK (app_name ~ '^[A-Za-z0-9._-]{1,48}$'),
    key_hash     bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    revoked_at   timestamptz,
    revoked_by   text,
    last_used_at timestamptz
);
-- One live key per application; a revoked application can be issued a new key.
CREATE UNIQUE INDEX open311_keys_live_app ON open311_keys (app_name) WHERE revoked_at IS NULL;

-- The Open311 side of a case: the channel (client application) it came through, the
-- contact (by opaque id), the citizen's address text, media and service attributes.
CREATE TABLE open311_requests (
    incident_id    bigint PRIMARY KEY REFERENCES incidents (id),
    key_id         bigint NOT NULL REFERENCES open311_keys (id),
    channel        text NOT NULL,
    contact_id     text REFERENCES contacts (id),
    address_string text,
    media_url      text,
    attributes     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX open311_requests_contact ON open311_requests (contact_id);
