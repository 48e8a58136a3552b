-- Committed seeds for the double-random draw (dispatch/inspections.py, "Committed seeds"):
-- nobody chooses a draw's seed. A commitment (SHA-256 of a server secret) is published
-- with its terms before the draw; the draw's seed is derived from the secret and the
-- inputs; the secret is shown once the draw is published. Results are published by a
-- supervisor too, not by being entered.

-- One row per announced draw. secret: never shown by the API before the draw it seeds is
-- published. commitment: SHA-256(secret), public from the start. A commitment is used by
-- one draw attempt: it seeds at most one draw (inspection_draws.commitment_id is unique),
-- and an attempt that fails (too few inspectors for a drawn target, ...) uses it up too
-- (failed_*), so that nobody can change the registry and try the same secret again. A
-- commitment drawn but never published, or failed, stays visible on the public page.
CREATE TABLE inspection_commitments (
    id                    bigserial PRIMARY KEY,
    matter_id             text NOT NULL REFERENCES inspection_matters (id),
    targets               integer NOT NULL CHECK (targets >= 1),
    inspectors_per_target integer NOT NULL CHECK (inspectors_per_target >= 2),
    risk_weights          jsonb,                  -- NULL: every entity weighs 1
    commitment            text NOT NULL UNIQUE CHECK (commitment ~ '^[0-9a-f]{64}$'),
    secret                text NOT NULL,
    committed_at          timestamptz NOT NULL,
    committed_by          text NOT NULL,
    failed_at             timestamptz,
    failed_by             text,
    failure               text                    -- the error code of the failed attempt
);
CREATE INDEX inspection_commitments_matter ON inspection_commitments (matter_id, committed_at);

-- Draws made before this migration have no commitment (their seed was generated or
-- typed); they stay readable and verifiable, but only committed draws can be published.
ALTER TABLE inspection_draws
    ADD COLUMN commitment_id bigint UNIQUE REFERENCES inspection_commitments (id),
    ADD COLUMN inputs_digest text;

-- A result is public once a supervisor publishes it (publishing a draw publishes the
-- results recorded so far; later results wait for the next publication).
ALTER TABLE inspection_results
    ADD COLUMN published_at timestamptz,
    ADD COLUMN published_by text;
UPDATE inspection_results r SET published_at = d.published_at, published_by = d.published_by
    FROM inspection_draws d WHERE d.id = r.draw_id AND d.published;
