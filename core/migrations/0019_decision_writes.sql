-- A dispatch decision's events in one round trip, however many cases it moves (issue 11's
-- latency line; dispatch/decision_writes.py, docs/PERFORMANCE.md).
--
-- core/outbox.record_many: the same as outbox_record (0018) once per event, in the
-- order given: the transaction-level advisory lock that makes seq order commit order is
-- taken once, before the first seq; each event gets the next seq in turn; one NOTIFY
-- (PostgreSQL folds the notifications of a transaction into one per channel anyway).
CREATE FUNCTION outbox_record_many(p_kinds text[], p_payloads jsonb[], p_lock bigint,
                                   p_channel text)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    seqs bigint[] := '{}';
    new_seq bigint;
BEGIN
    IF coalesce(array_length(p_kinds, 1), 0) = 0 THEN
        RETURN seqs;
    END IF;
    IF array_length(p_kinds, 1) <> coalesce(array_length(p_payloads, 1), 0) THEN
        RAISE EXCEPTION 'outbox_record_many: % kinds, % payloads',
            array_length(p_kinds, 1), coalesce(array_length(p_payloads, 1), 0);
    END IF;
    PERFORM pg_advisory_xact_lock(p_lock);  -- before nextval: seq order is commit order
    FOR k IN 1 .. array_length(p_kinds, 1) LOOP
        INSERT INTO events (kind, payload) VALUES (p_kinds[k], p_payloads[k])
        RETURNING seq INTO new_seq;
        seqs := seqs || new_seq;
    END LOOP;
    PERFORM pg_notify(p_channel, '');
    RETURN seqs;
END
$$;
