"""A decision that moves several cases is written as one: all of it or none of it, with
the same case-log entries, SLA clocks and events, in the same order, as when each move
was written on its own (dispatch/decision_writes.py), on the real database.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from core.db import connect, create_pool, row_view
from dispatch import decision_writes, decisions, planner, service, store
from dispatch.model import DispatchPolicy
from dispatch.service import OVERRIDE_REASONS, SYSTEM_ACTOR
from tests.conftest import town_database, town_doc

TOWN = town_doc()
# Positions are set by the test, not reported live: no unit may count as stale.
POLICY = DispatchPolicy(stale_after_s=86400.0, preempt_up_to_priority=2,
                        preempt_penalty_s=360.0, replan_gain_s=240.0)
OPERATOR = "operator1"
NOTE = "crew knows the estate"

# Makes every INSERT of an assignment for the case named in decision_fail fail: a write
# that breaks late in a decision, after its withdrawals and other dispatches.
FAIL_TRIGGER = """
CREATE TABLE decision_fail (incident_id bigint);
CREATE FUNCTION decision_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.incident_id IN (SELECT incident_id FROM decision_fail) THEN
        RAISE EXCEPTION 'injected failure for case %', NEW.incident_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER decision_fail BEFORE INSERT ON assignments
    FOR EACH ROW EXECUTE FUNCTION decision_fail();
"""


@pytest_asyncio.fixture
async def db_url(base_db_url: str) -> AsyncIterator[str]:
    async with town_database(base_db_url, "w") as url:
        conn = await connect(url)
        try:
            await conn.execute("UPDATE units SET position_ts = now() WHERE lon IS NOT NULL")
            await conn.execute(FAIL_TRIGGER)
        finally:
            await conn.close()
        yield url


async def _open(pool: asyncpg.Pool, device: int, priority: int = 3) -> str:
    spot = TOWN["devices"][device]
    inc = await service.open_incident(
        pool, category="city_order", qualification="city_management", priority=priority,
        title="占道经营", description="", lon=spot["lon"], lat=spot["lat"],
        source="operator", reporter=OPERATOR)
    return str(inc["id"])


async def _picture(conn: asyncpg.Connection) -> dict[str, Any]:
    """Everything a decision writes, as stored."""
    out: dict[str, Any] = {}
    for table, order in (("case_log", "id"), ("events", "seq"), ("assignments", "id"),
                         ("sla_clocks", "incident_id, stage"), ("supervisor_alerts", "id"),
                         ("incidents", "id"), ("units", "id")):
        out[table] = [dict(r) for r in await conn.fetch(
            f"SELECT * FROM {table} ORDER BY {order}")]
    return out


async def _written_since(conn: asyncpg.Connection, log_id: int, seq: int
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    log = [dict(r) for r in await conn.fetch(
        "SELECT incident_id::text AS incident_id, action, from_state, to_state, actor, reason "
        "FROM case_log WHERE id > $1 ORDER BY id", log_id)]
    events = [dict(r) for r in await conn.fetch(
        "SELECT kind, payload FROM events WHERE seq > $1 ORDER BY seq", seq)]
    return log, events


def _expected_log(d: planner.Decision, actor: str, note: str) -> list[dict[str, Any]]:
    """The entries each move writes, in the decision's order (withdrawals, then
    dispatches): the input's own moves by the operator, the plan's by the system."""
    out = []
    for w in d.withdrawals:
        mine = w.why.code in ("withdraw.override", "withdraw.redirected")
        # A crew that declined or let the time run out "declines"; the rest are withdrawn.
        action = "decline" if w.status in ("declined", "escalated") else "withdraw"
        out.append({"incident_id": w.incident_id, "action": action,
                    "from_state": "dispatched", "to_state": "registered",
                    "actor": actor if mine else SYSTEM_ACTOR,
                    "reason": w.why.text() + (f" — {note}" if mine else "")})
    for x in d.dispatches:
        if x.override_code is not None:
            text = (f"{x.override_code}: {OVERRIDE_REASONS[x.override_code]} — {note}")
        else:
            text = x.why.text()
        out.append({"incident_id": x.incident_id, "action": "dispatch",
                    "from_state": "registered", "to_state": "dispatched",
                    "actor": actor if x.override_code else SYSTEM_ACTOR, "reason": text})
    return out


def _event_outline(d: planner.Decision) -> list[tuple[str, str]]:
    """(kind, incident or unit id) of each event the decision records, in order."""
    out = [("incident.updated", w.incident_id) for w in d.withdrawals]
    out += [("supervisor.alerted", a.incident_id) for a in d.alerts]
    out += [("unit.assigned", x.incident_id) for x in d.dispatches]
    sent = {x.unit_id for x in d.dispatches}
    out += [("unit.status_changed", w.unit_id) for w in d.withdrawals
            if w.unit_id not in sent]
    return out


def _outline(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["kind"], str(e["payload"]["unit"]["id"] if e["kind"] == "unit.status_changed"
                            else e["payload"]["incident"]["id"])) for e in events]


async def _check_views(conn: asyncpg.Connection, events: list[dict[str, Any]]) -> None:
    """The last view of each case, unit and assignment an event carries is the row as
    committed: what the console and the crews' phones are told is what is stored."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        for key in ("incident", "unit", "assignment"):
            if isinstance(e["payload"].get(key), dict):
                last[(key, str(e["payload"][key]["id"]))] = e["payload"][key]
    assert last
    for (key, ident), view in last.items():
        if key == "incident":
            assert view == await store.incident_view(conn, int(ident))
        elif key == "unit":
            assert view == await store.unit_view(conn, ident)
        else:
            row = await conn.fetchrow("SELECT * FROM assignments WHERE id = $1", int(ident))
            assert view == row_view(row)


async def test_a_redirect_that_moves_three_cases_is_written_whole_or_not_at_all(
        db_url: str) -> None:
    """A redirect takes X off case B and sends it to case D; B is planned again in the
    same decision. A failure at B's new assignment leaves nothing written; decided again,
    every entry, clock and event is as each move on its own would have written it."""
    pool = await create_pool(db_url)
    conn = await connect(db_url)
    try:
        b = await _open(pool, 4)
        await decisions.decide_and_apply(pool, planner.IncidentRegistered(b), None, POLICY)
        x = await conn.fetchval("SELECT assigned_unit FROM incidents WHERE id = $1", int(b))
        assert x is not None
        b_dispatch_met = await conn.fetchval(
            "SELECT met_at FROM sla_clocks WHERE incident_id = $1 AND stage = 'dispatch'",
            int(b))
        await service.apply_action(pool, int(b), "accept", x, None)  # X is en route
        # D waits without a decision (no leader runs): the redirect below sends X there.
        d_case = await _open(pool, 9, priority=2)
        await conn.execute("INSERT INTO decision_fail VALUES ($1)", int(b))
        before = await _picture(conn)
        redirect = planner.Redirect(x, "local_knowledge", d_case)
        with pytest.raises(asyncpg.PostgresError, match="injected failure"):
            await decisions.decide_and_apply(pool, redirect, None, POLICY, actor=OPERATOR,
                                             note=NOTE)
        assert await _picture(conn) == before  # nothing of it stayed

        await conn.execute("DELETE FROM decision_fail")
        log_id = int(await conn.fetchval("SELECT max(id) FROM case_log"))
        seq = int(await conn.fetchval("SELECT max(seq) FROM events"))
        d, views = await decisions.decide_and_apply(pool, redirect, None, POLICY,
                                                    actor=OPERATOR, note=NOTE)
        first = d.withdrawals[0]
        assert (first.incident_id, first.unit_id, first.status) == (b, x, "redirected")
        sent = {x_.incident_id: x_.unit_id for x_ in d.dispatches}
        assert sent[d_case] == x and sent[b] not in (None, x)
        assert len(d.withdrawals) + len(d.dispatches) >= 3

        log, events = await _written_since(conn, log_id, seq)
        # The en-route case is withdrawn from "accepted", not "dispatched".
        expected = _expected_log(d, OPERATOR, NOTE)
        expected[0]["from_state"] = "accepted"
        assert log == expected
        assert _outline(events) == _event_outline(d)
        withdrawn = events[0]["payload"]
        assert withdrawn["action"] == "withdraw" and withdrawn["released_unit"] == x
        assert withdrawn["incident"]["state"] == "registered"
        assert withdrawn["incident"]["assigned_unit"] is None
        await _check_views(conn, events)
        assert {k: v["id"] for k, v in views.items()} == {
            k: await conn.fetchval("SELECT id FROM assignments WHERE incident_id = $1 AND "
                                   "status = 'active'", int(k)) for k in views}
        # B keeps the dispatch stage met by its first dispatch; every chain checks out.
        assert await conn.fetchval(
            "SELECT met_at FROM sla_clocks WHERE incident_id = $1 AND stage = 'dispatch'",
            int(b)) == b_dispatch_met
        for case in {e["incident_id"] for e in log}:
            assert (await service.verify_case_log(pool, int(case)))["ok"]
        assert await conn.fetchval(
            "SELECT status FROM assignments WHERE incident_id = $1 AND unit_id = $2",
            int(b), x) == "redirected"
        assert await conn.fetchval("SELECT status FROM units WHERE id = $1", x) == "dispatched"
    finally:
        await conn.close()
        await pool.close()


async def test_an_escalation_alerts_and_plans_the_case_again_in_one_write(
        db_url: str) -> None:
    """A time-out takes the unit off, alerts the supervisor and sends the next unit:
    withdrawal, alert, dispatch and the freed unit, in that order, or nothing."""
    pool = await create_pool(db_url)
    conn = await connect(db_url)
    try:
        c = await _open(pool, 2)
        await decisions.decide_and_apply(pool, planner.IncidentRegistered(c), None, POLICY)
        y = await conn.fetchval("SELECT assigned_unit FROM incidents WHERE id = $1", int(c))
        timed_out = planner.AcceptTimedOut(c, y, 600.0)
        await conn.execute("INSERT INTO decision_fail VALUES ($1)", int(c))
        before = await _picture(conn)
        with pytest.raises(asyncpg.PostgresError, match="injected failure"):
            await decisions.decide_and_apply(pool, timed_out, None, POLICY)
        assert await _picture(conn) == before

        await conn.execute("DELETE FROM decision_fail")
        log_id = int(await conn.fetchval("SELECT max(id) FROM case_log"))
        seq = int(await conn.fetchval("SELECT max(seq) FROM events"))
        d, _ = await decisions.decide_and_apply(pool, timed_out, None, POLICY)
        assert [(w.incident_id, w.status) for w in d.withdrawals] == [(c, "escalated")]
        assert [a.kind for a in d.alerts] == ["escalated"]
        assert d.dispatches and d.dispatches[0].incident_id == c
        log, events = await _written_since(conn, log_id, seq)
        assert log == _expected_log(d, OPERATOR, "")
        assert _outline(events) == _event_outline(d)
        alert = next(e["payload"] for e in events if e["kind"] == "supervisor.alerted")
        # The alert shows the case as the withdrawal left it, before its new dispatch.
        assert alert["incident"]["assigned_unit"] is None
        assert alert["incident"]["state"] == "registered"
        assert alert["alert"]["kind"] == "escalated"
        assert alert["alert"]["why"] == d.alerts[0].why.as_json()
        await _check_views(conn, events)
        esc = await conn.fetchrow(
            "SELECT status, escalated_at FROM assignments WHERE incident_id = $1 AND "
            "unit_id = $2", int(c), y)
        assert esc["status"] == "escalated" and esc["escalated_at"] is not None
        assert (await service.verify_case_log(pool, int(c)))["ok"]
    finally:
        await conn.close()
        await pool.close()


async def test_warming_a_connection_writes_nothing_and_prepares_every_statement(
        db_url: str) -> None:
    """The leader's own connection is warmed when it takes the lead (``decisions.warm``):
    the state read and every write statement run with nothing to write, rolled back.
    Nothing is written, the connection then holds each of them prepared (a fresh
    connection's first decision paid 20-60 ms for that), and it decides whole after."""
    pool = await create_pool(db_url, 1, 1, max_inactive_s=0)
    conn = await connect(db_url)
    try:
        a = await _open(pool, 4)
        before = await _picture(conn)
        await decisions.warm(pool)
        assert await _picture(conn) == before
        async with pool.acquire() as c:
            assert not c.is_in_transaction()
            prepared = {r["statement"] for r in await c.fetch(
                "SELECT statement FROM pg_prepared_statements")}
        assert {store.STATE_SQL, decision_writes.LOCK_UNITS, decision_writes.LOCK_CASES,
                decision_writes.END_AND_MOVE, decision_writes.INSERT_ALERTS,
                decision_writes.WRITE_CASES} <= prepared
        d, views = await decisions.decide_and_apply(pool, planner.IncidentRegistered(a),
                                                    None, POLICY)
        assert [x.incident_id for x in d.dispatches] == [a]
        assert await conn.fetchval("SELECT assigned_unit FROM incidents WHERE id = $1",
                                   int(a)) == d.dispatches[0].unit_id == views[a]["unit_id"]
    finally:
        await conn.close()
        await pool.close()


async def test_the_leaders_pool_without_session_reset_still_ends_a_left_open_decision(
        db_url: str) -> None:
    """The leader's pool skips asyncpg's session reset on release (``create_pool``'s
    ``session_reset=False``: a round trip before each decision's report). A decision's
    transaction left open (cut short between its plan lock and its commit) is still rolled
    back on release: the next user of the connection is outside any transaction, the plan
    lock is free for other deciders, and nothing of the cut decision was kept."""
    pool = await create_pool(db_url, 1, 1, max_inactive_s=0, session_reset=False)
    other = await connect(db_url)
    try:
        async with pool.acquire() as c:
            await c.execute(decisions.BEGIN_LOCKED)
            await c.execute("CREATE TEMP TABLE cut_short (x int) ON COMMIT DROP")
            pid = await c.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as c:
            assert not c.is_in_transaction()
            assert await c.fetchval("SELECT pg_backend_pid()") == pid  # the same connection
            assert await c.fetchval("SELECT to_regclass('cut_short') IS NULL")
        assert await other.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", pid) == 0
        assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                    decisions.PLAN_LOCK_KEY)
    finally:
        await other.close()
        await pool.close()


async def test_a_decider_that_commits_between_read_and_write_makes_the_other_decide_again(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt reads the state and decides before it takes the plan lock. If
    another decider commits in that gap (here: an operator's override of the same case,
    from another connection), the writes find their rows moved (``Stale``) and the
    decision is taken again under the lock: the case is assigned once, to the operator's
    unit, with one dispatch in its log and one ``unit.assigned`` event."""
    pool = await create_pool(db_url)
    conn = await connect(db_url)
    try:
        a = await _open(pool, 4)
        # The operator's pick: a qualified unit other than the plan's.
        plan_unit = await planner_pick(pool, a)
        other = await conn.fetchval(
            "SELECT id FROM units WHERE 'city_management' = ANY(qualifications) "
            "AND status = 'available' AND id <> $1 ORDER BY id LIMIT 1", plan_unit)
        assert other is not None
        reads = 0
        real_read = store.dispatch_state

        async def read_then_race(c: Any) -> Any:
            nonlocal reads
            reads += 1
            state = await real_read(c)
            if reads == 1:  # the leader's optimistic read: the override lands right after
                await decisions.override(pool, int(a), other, OPERATOR, "local_knowledge",
                                         NOTE, None, POLICY)
            return state

        monkeypatch.setattr(store, "dispatch_state", read_then_race)
        d, views = await decisions.decide_and_apply(pool, planner.IncidentRegistered(a),
                                                    None, POLICY)
        monkeypatch.undo()
        # The override read once (it ran inside the hook), the leader twice: its optimistic
        # read, then its read under the lock, where the case is no longer waiting.
        assert reads == 3
        assert not d.dispatches and views == {}
        assert await conn.fetchval("SELECT assigned_unit FROM incidents WHERE id = $1",
                                   int(a)) == other
        assert await conn.fetchval(
            "SELECT count(*) FROM assignments WHERE incident_id = $1", int(a)) == 1
        assert await conn.fetchval(
            "SELECT count(*) FROM case_log WHERE incident_id = $1 AND action = 'dispatch'",
            int(a)) == 1
        assert await conn.fetchval(
            "SELECT count(*) FROM events WHERE kind = 'unit.assigned' "
            "AND (payload->'assignment'->>'incident_id')::bigint = $1", int(a)) == 1
        assert (await service.verify_case_log(pool, int(a)))["ok"]
    finally:
        await conn.close()
        await pool.close()


async def planner_pick(pool: asyncpg.Pool, incident_id: str) -> str:
    """The unit the core would send to ``incident_id`` now (read only)."""
    async with pool.acquire() as c:
        state = await store.dispatch_state(c)
    d = planner.decide(state, planner.IncidentRegistered(incident_id), time.time(), POLICY,
                       None)
    return d.dispatches[0].unit_id
