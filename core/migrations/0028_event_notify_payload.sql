-- Each event travels in its own NOTIFY (issue 16, console round four; docs/PERFORMANCE.md).
--
-- outbox_record (0018) and outbox_record_many (0019) sent an empty NOTIFY; every process's
-- event feed (core/outbox.EventFeed) then read the new events back from the table: one more
-- round trip, and two more turns of the hub's event loop, on every operator event's way to
-- the screens. Now each event's NOTIFY carries the event itself ({"seq", "ts", "kind",
-- "payload"}), so a feed publishes it as it arrives when it is the next seq it expects;
-- anything else (a seq after a gap, a notification missed while disconnected) is read from
-- the table as before, which stays the record. A NOTIFY payload must be under 8000 bytes:
-- a larger event's NOTIFY carries only its seq, and the feed reads it (a unit.assigned
-- with its candidates' ranking is 7.1-7.9 kB: some of them).
--
-- Unchanged: the lock before the first seq (seq order is commit order), one INSERT per
-- event in the order given, delivery only on commit (PostgreSQL delivers a transaction's
-- notifications in the order sent, and transactions' in commit order).
CREATE FUNCTION outbox_notice(p_seq bigint, p_kind text, p_payload jsonb) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN octet_length(t) < 8000 THEN t ELSE json_build_object('seq', p_seq)::text END
    FROM (SELECT json_build_object('seq', p_seq, 'ts', extract(epoch FROM now()),
                                   'kind', p_kind, 'payload', p_payload)::text AS t) AS n
$$;

CREATE OR REPLACE FUNCTION outbox_record(p_kind text, p_payload jsonb, p_lock bigint,
                                         p_channel text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_seq bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);  -- before nextval: seq order is commit order
    INSERT INTO events (kind, payload) VALUES (p_kind, p_payload) RETURNING seq INTO new_seq;
    PERFORM pg_notify(p_channel, outbox_notice(new_seq, p_kind, p_payload));
    RETURN new_seq;
END
$$;

CREATE OR REPLACE FUNCTION outbox_record_many(p_kinds text[], p_payloads jsonb[],
                                              p_lock bigint, p_channel text)
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
        PERFORM pg_notify(p_channel, outbox_notice(new_seq, p_kinds[k], p_payloads[k]));
    END LOOP;
    RETURN seqs;
END
$$;
