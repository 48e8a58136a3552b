-- The dispatch leader's decision on the hub's path in fewer round trips (issue 11's
-- latency line, docs/PERFORMANCE.md).
--
-- core/outbox.record appends one event in one round trip instead of three: the
-- transaction-level advisory lock that makes seq order commit order, the INSERT, and the
-- NOTIFY (delivered by PostgreSQL only on commit, and folded into one per transaction
-- and channel). The lock key and the channel stay constants of core/outbox.py, passed in.
CREATE FUNCTION outbox_record(p_kind text, p_payload jsonb, p_lock bigint, p_channel text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);  -- before nextval: seq order is commit order
    INSERT INTO events (kind, payload) VALUES (p_kind, p_payload) RETURNING seq INTO new_seq;
    PERFORM pg_notify(p_channel, '');
    RETURN new_seq;
END
$$;

-- dispatch/store.unit_states counts today's assignments of every unit in one grouped scan
-- of today's rows (not one probe per unit); this keeps that scan to today's rows however
-- long the table's history grows, and covers it (index-only with the unit id).
CREATE INDEX assignments_day ON assignments (assigned_at, unit_id);
