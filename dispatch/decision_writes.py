"""One dispatch decision written set-based: a fixed number of statements, however many
cases it moves.

``apply(conn, decision, now, actor, note)`` runs inside the decision's transaction, after
its plan lock (``decisions.decide_and_apply``), and writes what writing each move on its
own would (``service._release_unit`` and ``service._step`` per case): the same case-log
entries on each case's hash chain, the same SLA clocks, assignments, unit moves, alerts
and events, in the same order. Only the number of round trips differs:

1. lock the decision's units (id order), then its cases (id order): two statements;
2. read every moved case's log and SLA clock rows: one statement;
3. in memory, in the decision's order (withdrawals, alerts, dispatches): each case step
   through the pure workflow, the next hash-chain entry, the SLA clocks
   (``sla_clocks.clock_values``), the unit and case rows as each move leaves them and the
   views the events carry (a case withdrawn and sent again takes both steps, its events
   showing it in between);
4. write: end the withdrawn assignments and move the units (one statement); the alerts
   (one, when there are any); every case-log entry, the cases' rows, their clocks and the
   new assignments (one); the events (one, ``outbox.record_many``).

The decision's view of a case or unit is checked against the locked rows before anything
is written; if a crew's own action (accept, decline: it takes no plan lock) has moved one
since the state was read, ``Stale`` is raised and the caller decides again. Any failure
rolls the whole transaction back: a decision is written whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core import outbox
from core.db import Conn, row_view
from core.entities import INCIDENT_COLUMNS, UNIT_COLUMNS
from core.errors import InvalidInput
from core.events import (
    Event,
    IncidentUpdated,
    SupervisorAlerted,
    UnitAssigned,
    UnitStatusChanged,
)
from dispatch import planner, sla, sla_clocks, store, workflow
from dispatch.reasons import Reason
from dispatch.service import ACCEPT_TIMEOUT_S, OVERRIDE_REASONS, SYSTEM_ACTOR

# The workflow action that ends an assignment of each status.
ACTION_FOR = {"declined": "decline", "escalated": "decline", "preempted": "withdraw",
              "superseded": "withdraw", "redirected": "withdraw"}
# Unit statuses a dispatch may take a unit from (as the per-move UPDATE's condition was).
DISPATCHABLE = ("available", "returning")


# ---------------------------------------------------------------- the statements
# Lock the decision's units, then its cases, in id order ($1: ids).
LOCK_UNITS = (f"SELECT {UNIT_COLUMNS} FROM units u WHERE u.id = ANY($1::text[]) ORDER BY u.id "
              "FOR NO KEY UPDATE")
LOCK_CASES = (f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.id = ANY($1::bigint[]) "
              "ORDER BY i.id FOR UPDATE")
# End the withdrawn assignments ($1-$3) and move the units ($4-$6); $7: the decision's time.
END_AND_MOVE = f"""WITH ended AS (
      UPDATE assignments a SET status = e.status,
          escalated_at = CASE WHEN e.escalated AND a.status = 'active'
                              THEN $7 ELSE a.escalated_at END
      FROM unnest($1::bigint[], $2::text[], $3::bool[])
           AS e (incident_id, status, escalated)
      WHERE a.incident_id = e.incident_id
        AND a.status IN ('active', 'accepted'))
    UPDATE units u SET status = m.status, current_incident = m.incident_id,
                       updated_at = now()
    FROM unnest($4::text[], $5::text[], $6::bigint[])
         AS m (id, status, incident_id)
    WHERE u.id = m.id
    RETURNING {UNIT_COLUMNS}"""
# The alerts, in the decision's order.
INSERT_ALERTS = """INSERT INTO supervisor_alerts (incident_id, kind, message, why)
   SELECT a.incident_id, a.kind, a.message, a.why
   FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[])
        WITH ORDINALITY AS a (incident_id, kind, message, why, k)
   ORDER BY a.k
   RETURNING *"""
# Case-log entries ($1-$10), SLA clocks ($11-$16), the cases' rows ($17-$25) and the new
# assignments ($26-$34).
WRITE_CASES = """WITH log AS (
     INSERT INTO case_log (incident_id, seq, action, from_state, to_state,
                           actor, ts, reason, prev_hash, hash)
     SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[],
                          $5::text[], $6::text[], $7::timestamptz[],
                          $8::text[], $9::text[], $10::text[])),
   clk AS (
     INSERT INTO sla_clocks (incident_id, stage, started_at, deadline,
                             warn_at, met_at)
     SELECT * FROM unnest($11::bigint[], $12::text[], $13::timestamptz[],
                          $14::timestamptz[], $15::timestamptz[],
                          $16::timestamptz[])
     ON CONFLICT (incident_id, stage) DO UPDATE SET
       deadline = excluded.deadline, warn_at = excluded.warn_at,
       met_at = excluded.met_at),
   cases AS (
     UPDATE incidents i SET state = c.state, rework_count = c.rework_count,
         extension_count = c.extension_count, handler = c.handler,
         updated_at = c.updated_at, log_head = c.log_head, sla = c.sla,
         assigned_unit = c.assigned_unit
     FROM unnest($17::bigint[], $18::text[], $19::int[], $20::int[],
                 $21::text[], $22::timestamptz[], $23::text[], $24::jsonb[],
                 $25::text[])
          AS c (id, state, rework_count, extension_count, handler,
                updated_at, log_head, sla, assigned_unit)
     WHERE i.id = c.id)
   INSERT INTO assignments (incident_id, unit_id, assigned_at, eta_s, reason,
                            override_reason, recommendation, accept_due, why)
   SELECT * FROM unnest($26::bigint[], $27::text[], $28::timestamptz[],
                        $29::float8[], $30::text[], $31::text[],
                        $32::jsonb[], $33::timestamptz[], $34::jsonb[])
   RETURNING *"""


class Stale(Exception):
    """The committed state moved under the decision; decide again."""


@dataclass(slots=True)
class _Case:
    """A moved case as the decision leaves it so far."""

    row: dict[str, Any]  # INCIDENT_COLUMNS
    state: workflow.CaseState
    head: store.LogHead
    clock_rows: dict[str, Any]  # by stage: met_at, warned_at, breached_at
    clocks: sla_clocks.ClockValues | None = None


def _text(why: Reason, note: str) -> str:
    return why.text() + (f" — {note}" if note else "")


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows of ``width`` values as ``width`` column lists (unnest's parameters)."""
    return [[row[k] for row in rows] for k in range(width)]


def _step(case: _Case, action: str, actor: str, now: float, reason: str,
          entries: list[store.LogEntry]) -> None:
    """``service._step`` in memory: the workflow, the chain's next entry, the sla_clocks."""
    before = case.state
    try:
        after = workflow.apply(before, action, actor, now, reason)
    except workflow.TransitionError as e:
        raise InvalidInput(e.message, code=e.code) from e
    entry = store.chain_entry(case.head, int(case.row["id"]), action, before.state,
                              after.state, actor, now, reason)
    entries.append(entry)
    values = sla_clocks.clock_values(case.row, after, action, now, case.clock_rows)
    case.state, case.head = after, (entry.seq, entry.hash)
    case.clock_rows = values.next_rows(case.clock_rows)
    case.clocks = values
    case.row.update(state=after.state, rework_count=after.rework_count,
                    extension_count=after.extension_count, handler=after.handler,
                    updated_at=store.ts(now), sla=values.summary)


async def apply(conn: Conn, d: planner.Decision, now: float, actor: str, note: str
                ) -> dict[str, Any]:
    """Write decision ``d`` (see the module docstring). ``actor`` is recorded on the moves
    the input itself asked for (an operator's override or redirect, with ``note``); the
    rest are the system's. Returns the new assignments' views by incident id."""
    if d.empty:
        return {}
    # Units first, in id order: the ingest writer locks the units a position batch carries
    # in id order too (ingest/flush_sql.py LOCK_UNITS), so a decision and a flush never
    # deadlock. Then the cases, in id order (a crew's action locks one case, then its unit).
    unit_ids = sorted({w.unit_id for w in d.withdrawals} | {x.unit_id for x in d.dispatches})
    locked_units = {str(r["id"]): r for r in await conn.fetch(LOCK_UNITS, unit_ids)
                    } if unit_ids else {}
    ids = sorted({int(w.incident_id) for w in d.withdrawals}
                 | {int(x.incident_id) for x in d.dispatches})
    cases: dict[int, _Case] = {}
    if ids:
        rows = await conn.fetch(LOCK_CASES, ids)
        reads = await store.step_reads(conn, [int(r["id"]) for r in rows])
        cases = {int(r["id"]): _Case(dict(r), *reads[int(r["id"])]) for r in rows}
    units = {uid: {"status": r["status"], "current_incident": r["current_incident"]}
             for uid, r in locked_units.items()}

    entries: list[store.LogEntry] = []
    ended: list[tuple[int, str, bool]] = []  # (case, assignment status, escalated)
    moved: dict[str, tuple[str, int | None]] = {}  # unit -> (status, current case)
    withdrawn_events: list[Event] = []
    released: dict[str, str] = {}
    for w in d.withdrawals:
        by_operator = w.why.code in ("withdraw.override", "withdraw.redirected")
        case = cases.get(int(w.incident_id))
        if case is None or case.row["assigned_unit"] != w.unit_id:
            raise Stale
        if w.why.code == "withdraw.replanned" and case.row["state"] != "dispatched":
            # Re-planning moves only a unit that has not accepted; its crew accepted since
            # the state was read (crews take no plan lock): an accepted unit stays.
            raise Stale
        iid = int(w.incident_id)
        _step(case, ACTION_FOR[w.status], actor if by_operator else SYSTEM_ACTOR, now,
              _text(w.why, note if by_operator else ""), entries)
        ended.append((iid, w.status, w.status == "escalated"))
        unit = units.get(w.unit_id)
        if unit is not None and unit["current_incident"] == iid:
            unit.update(status="available", current_incident=None)
            moved[w.unit_id] = ("available", None)
        case.row["assigned_unit"] = None
        withdrawn_events.append(IncidentUpdated(
            incident=row_view(case.row), action=ACTION_FOR[w.status],
            released_unit=w.unit_id))
        released[w.unit_id] = w.incident_id

    # Each alert shows its case as the withdrawals left it (before any new dispatch).
    alert_views: list[dict[str, Any]] = []
    for a in d.alerts:
        case = cases.get(int(a.incident_id))
        alert_views.append(row_view(case.row) if case is not None
                           else await store.incident_view(conn, int(a.incident_id)))

    new_assignments: list[tuple[Any, ...]] = []
    assigned_views: list[dict[str, Any]] = []
    for x in d.dispatches:
        iid = int(x.incident_id)
        case = cases.get(iid)
        if case is None or case.row["state"] != "registered" \
                or case.row["assigned_unit"] is not None:
            raise Stale
        unit = units.get(x.unit_id)
        if unit is None or unit["status"] not in DISPATCHABLE:
            raise Stale
        unit.update(status="dispatched", current_incident=iid)
        moved[x.unit_id] = ("dispatched", iid)
        by_operator = x.override_code is not None
        text = _text(x.why, note if by_operator else "")
        override_text = None
        if x.override_code is not None:
            label = OVERRIDE_REASONS.get(x.override_code, x.override_code)
            override_text = f"{x.override_code}: {label}" + (f" — {note}" if note else "")
        recommendation = {
            "pick": x.pick, "reason": x.why.text(), "why": x.why.as_json(),
            "candidates": planner.candidates_json(x.candidates),
        }
        accept_due = now + (ACCEPT_TIMEOUT_S.get(int(case.row["priority"]), 900.0)
                            * sla_clocks.SlaConfig.scale)
        new_assignments.append((iid, x.unit_id, store.ts(now), x.eta_s, text, override_text,
                                recommendation, store.ts(accept_due), x.why.as_json()))
        case.row["assigned_unit"] = x.unit_id
        _step(case, "dispatch", actor if by_operator else SYSTEM_ACTOR, now,
              override_text or text, entries)
        assigned_views.append(row_view(case.row))
        released.pop(x.unit_id, None)

    # ---- the writes
    unit_rows: dict[str, Any] = dict(locked_units)
    if ended or moved:
        for r in await conn.fetch(
                END_AND_MOVE,
                [e[0] for e in ended], [e[1] for e in ended], [e[2] for e in ended],
                list(moved), [m[0] for m in moved.values()], [m[1] for m in moved.values()],
                # the decision's time, not the database's: a backfill decides in the past
                store.ts(now)):
            unit_rows[str(r["id"])] = r
    alert_rows: list[Any] = []
    if d.alerts:
        # Inserted in the decision's order (ids ascend with it).
        alert_rows = sorted(await conn.fetch(
            INSERT_ALERTS,
            [int(a.incident_id) for a in d.alerts], [a.kind for a in d.alerts],
            [a.why.text() for a in d.alerts], [a.why.as_json() for a in d.alerts]),
            key=lambda r: int(r["id"]))
    assignment_rows: dict[str, Any] = {}
    if cases:
        final = list(cases.values())
        clocked = [(int(c.row["id"]), c.clocks) for c in final if c.clocks is not None]
        n_stages = len(sla.STAGES)
        for r in await conn.fetch(
                WRITE_CASES,
                *_columns([e.args() for e in entries], 10),
                [iid for iid, _ in clocked for _ in range(n_stages)],
                [stage for _ in clocked for stage in sla.STAGES],
                [v.started_at for _, v in clocked for _ in range(n_stages)],
                [t for _, v in clocked for t in v.deadlines],
                [t for _, v in clocked for t in v.warn_ats],
                [t for _, v in clocked for t in v.mets],
                [int(c.row["id"]) for c in final], [c.row["state"] for c in final],
                [c.row["rework_count"] for c in final],
                [c.row["extension_count"] for c in final], [c.row["handler"] for c in final],
                [c.row["updated_at"] for c in final],
                [c.head[1] if c.head else None for c in final],
                [c.row["sla"] for c in final], [c.row["assigned_unit"] for c in final],
                *_columns(new_assignments, 9)):
            assignment_rows[str(r["incident_id"])] = r

    events: list[Event] = list(withdrawn_events)
    events += [SupervisorAlerted(alert=row_view(row), incident=view)
               for row, view in zip(alert_rows, alert_views, strict=True)]
    views: dict[str, Any] = {}
    for x, inc_view in zip(d.dispatches, assigned_views, strict=True):
        views[x.incident_id] = row_view(assignment_rows[x.incident_id])
        events.append(UnitAssigned(incident=inc_view, unit=row_view(unit_rows[x.unit_id]),
                                   assignment=views[x.incident_id]))
    # Taken off a case and not sent elsewhere: now free.
    events += [UnitStatusChanged(unit=row_view(unit_rows[u])) for u in released]
    await outbox.record_many(conn, events)
    return views


async def warm(conn: Conn) -> None:
    """Run every statement ``apply`` sends once, with nothing to write, in the caller's
    transaction (which the caller rolls back): the connection then holds them prepared,
    with their types known. On a fresh connection the first decision's writes cost a
    parse round trip per statement and asyncpg's type introspection (four more queries,
    20-30 ms in all, measured: docs/PERFORMANCE.md)."""
    await conn.fetch(LOCK_UNITS, [])
    await conn.fetch(LOCK_CASES, [])
    await store.step_reads(conn, [])
    await conn.fetch(END_AND_MOVE, [], [], [], [], [], [], None)
    await conn.fetch(INSERT_ALERTS, [], [], [], [])
    await conn.fetch(WRITE_CASES, *([[]] * 34))
