"""Dispatch I/O: read engine values from the database, append to the case log.

Thin: converts rows to the pure model's values and back. Decisions are in engine.py and
workflow.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core import clock
from core.db import Conn, Querier, row_view
from core.entities import INCIDENT_COLUMNS, UNIT_COLUMNS
from dispatch import sla_config, workflow
from dispatch.model import IncidentState, UnitState
from dispatch.planner import DispatchState

# Case states in which the planner sees an incident: waiting for a unit, or with a unit
# that has not yet reached the scene (which a more urgent case may still divert).
PLANNED_STATES = ("registered", "dispatched", "accepted")
# Assignments that bar their unit from that case: it declined, let it time out, or an
# operator redirected it elsewhere.
BARRING_STATUSES = ("declined", "escalated", "redirected")


# seconds -> datetime for asyncpg (core.clock's one conversion)
ts = clock.to_datetime


async def unit_states(conn: Querier) -> list[UnitState]:
    """Every unit as the engine sees it, with today's case count and current priority."""
    return list((await dispatch_state(conn)).units)


# The planned cases and every unit in one statement (one round trip, one snapshot: it runs
# right after the plan lock, in every decision). The two kinds share 13 columns:
#   kind | id | category / type | qualification / status | barred units / qualifications |
#   lon | lat | grid / home grid | opened_at / fix time | - / on duty since |
#   priority / current case's priority | - / cases today | assigned unit / current case
# A case comes with the units barred from it (an index probe per planned case, bounded by
# the open cases, not by the assignments' history). A unit's current case's priority is a
# primary-key join (a hash join read every incident ever recorded, a cost that grew with
# the history; a join on the key costs less than a sub-select per unit), its cases today
# one grouped scan of today's assignments (index assignments_day), in the town's day
# (00:00 in the town, not UTC's). Times come as epoch seconds, which is what the core
# takes (decoding 300 rows' timestamps into datetimes and back cost more than the query),
# from ``date_part``: float8 computed directly, where ``extract`` computes a numeric and
# the cast converts it (both the double nearest the exact microseconds / 1e6, so the same
# value; ``date_part`` cost ~0.5 ms less over 300 units, measured: docs/PERFORMANCE.md).
STATE_SQL = """
    SELECT 'i' AS kind, i.id::text AS id, i.category, i.qualification,
           (SELECT array_agg(DISTINCT a.unit_id) FROM assignments a
            WHERE a.incident_id = i.id AND a.status = ANY($2::text[])) AS quals,
           i.lon, i.lat, i.grid_id AS grid,
           date_part('epoch', i.opened_at) AS t1, NULL::float8 AS t2,
           i.priority AS n1, NULL::bigint AS n2, i.assigned_unit AS ref
    FROM incidents i WHERE i.state = ANY($1::text[])
    UNION ALL
    SELECT 'u', u.id, u.type, u.status, u.qualifications, u.lon, u.lat, u.home_grid,
           date_part('epoch', u.position_ts), date_part('epoch', u.duty_since),
           ci.priority, coalesce(today.n, 0), u.current_incident::text
    FROM units u
    LEFT JOIN incidents ci ON ci.id = u.current_incident
    LEFT JOIN (SELECT a.unit_id, count(*) AS n FROM assignments a
               WHERE a.assigned_at >= date_trunc('day', now(), $3)
               GROUP BY a.unit_id) today ON today.unit_id = u.id"""


class _Built:
    """The core's values built from the state read's rows, by row (a memo).

    A row's value is a function of the row's content alone, so a row read again with the
    same content (most units and cases between two decisions: a decision moves a few, a
    position round a few dozen) is given the value built the first time, not built again
    (building ~400 values was ~2 ms of every decision's state read). Every read still
    reads every row and compares it whole with the row the value was built from; only the
    Python objects are reused, so a read's values equal those built afresh from its rows,
    whoever wrote them. Kept: the rows of the last read only.
    """

    def __init__(self) -> None:
        # id -> (the row, the value built from it); cases and units apart (ids may clash)
        self.incidents: dict[str, tuple[Any, IncidentState]] = {}
        self.units: dict[str, tuple[Any, UnitState]] = {}


_BUILT = _Built()


async def dispatch_state(conn: Querier) -> DispatchState:
    """What the decision core plans over, as committed now (read inside the decision's
    transaction, after its lock): ``STATE_SQL``."""
    rows = await conn.fetch(STATE_SQL, list(PLANNED_STATES), list(BARRING_STATUSES),
                            sla_config.InForce.tz)
    return state_from_rows(rows, _BUILT)


def state_from_rows(rows: Iterable[Any], built: _Built) -> DispatchState:
    """``STATE_SQL``'s rows as the core's values; ``built``: the values of earlier reads'
    rows, reused where the row is equal (``_Built``), replaced by this read's."""
    incidents: list[IncidentState] = []
    units: list[UnitState] = []
    excluded: dict[str, frozenset[str]] = {}
    old_incidents, old_units = built.incidents, built.units
    new_incidents: dict[str, tuple[Any, IncidentState]] = {}
    new_units: dict[str, tuple[Any, UnitState]] = {}
    # A town's units hold a handful of distinct qualification sets: one frozenset each.
    qual_sets: dict[tuple[str, ...], frozenset[str]] = {}
    # Unpacked by position (the SELECT's order) and built with positional arguments (the
    # fields' order in model.py): each about half the cost of the by-name form, for each
    # of 2,000 rows at town scale, in every decision.
    for row in rows:
        (kind, rid, a, b, quals, lon, lat, grid, t1, t2, n1, n2, ref) = row
        if kind == "i":
            if quals:
                excluded[rid] = frozenset(quals)
            prev_i = old_incidents.get(rid)
            if prev_i is not None and prev_i[0] == row:
                inc = prev_i[1]
            else:
                inc = IncidentState(rid, a, int(n1), b, float(lon), float(lat), grid or "",
                                    t1, ref)
            new_incidents[rid] = (row, inc)
            incidents.append(inc)
        else:
            prev_u = old_units.get(rid)
            if prev_u is not None and prev_u[0] == row:
                unit = prev_u[1]
            else:
                key = tuple(quals)
                qs = qual_sets.get(key)
                if qs is None:
                    qs = qual_sets[key] = frozenset(key)
                if t1 is None:  # no fix: no position, whatever the columns hold
                    lon = lat = None
                unit = UnitState(rid, a, qs, b, lon, lat, t1, grid, t2, int(n2), ref,
                                 int(n1) if n1 else None)
            new_units[rid] = (row, unit)
            units.append(unit)
    built.incidents, built.units = new_incidents, new_units
    # Cases in id order; units in id order too, so every node plans over the same sequence
    # whatever plan the database chose.
    incidents.sort(key=lambda i: int(i.id))
    units.sort(key=lambda u: u.id)
    return DispatchState(tuple(incidents), tuple(units), excluded)


def incident_state(row: Mapping[str, Any]) -> IncidentState:
    opened = row["opened_at"]
    return IncidentState(
        id=str(row["id"]),
        category=row["category"],
        priority=int(row["priority"]),
        qualification=row["qualification"],
        lon=float(row["lon"]),
        lat=float(row["lat"]),
        grid=row["grid_id"] or "",
        opened_at=opened if isinstance(opened, float) else opened.timestamp(),
        assigned_unit=row["assigned_unit"],
    )


async def case_state(conn: Querier, incident_id: int) -> workflow.CaseState:
    """The case's workflow state, rebuilt from its log: the log is the record, the columns
    on ``incidents`` are a copy for queries."""
    return (await case_state_and_head(conn, incident_id))[0]


# The last entry of a case's hash chain: (seq, hash), None for a case with no entry yet.
LogHead = tuple[int, str] | None


async def case_state_and_head(conn: Querier, incident_id: int
                              ) -> tuple[workflow.CaseState, LogHead]:
    """``case_state`` and the chain's last entry, from the same read of the log (a case
    step needs both: one round trip, not two). Caller holds the incident's row lock if it
    appends after this."""
    rows = await conn.fetch(
        "SELECT seq, hash, action, actor, ts, reason FROM case_log WHERE incident_id = $1 "
        "ORDER BY seq", incident_id)
    return _replay(rows)


def _replay(rows: list[Any]) -> tuple[workflow.CaseState, LogHead]:
    state = workflow.replay([{"action": r["action"], "actor": r["actor"],
                              "ts": r["ts"].timestamp(), "reason": r["reason"]}
                             for r in rows])
    return state, ((int(rows[-1]["seq"]), str(rows[-1]["hash"])) if rows else None)


async def step_read(conn: Querier, incident_id: int
                    ) -> tuple[workflow.CaseState, LogHead, dict[str, Any]]:
    """What a case step reads, in one round trip: ``case_state_and_head`` and the case's
    SLA clock rows by stage (``clocks.update_clocks``'s ``prev``)."""
    rows = await conn.fetch(
        """SELECT seq, hash, action, actor, ts, reason, NULL::text AS stage,
                  NULL::timestamptz AS met_at, NULL::timestamptz AS warned_at,
                  NULL::timestamptz AS breached_at
           FROM case_log WHERE incident_id = $1
           UNION ALL
           SELECT NULL, NULL, NULL, NULL, NULL, NULL, stage, met_at, warned_at, breached_at
           FROM sla_clocks WHERE incident_id = $1
           ORDER BY seq""", incident_id)  # log entries in order; clock rows (no seq) last
    log_rows = [r for r in rows if r["seq"] is not None]
    state, head = _replay(log_rows)
    return state, head, {r["stage"]: r for r in rows if r["seq"] is None}


async def step_reads(conn: Querier, incident_ids: list[int]
                     ) -> dict[int, tuple[workflow.CaseState, LogHead, dict[str, Any]]]:
    """``step_read`` of several cases in one round trip (a decision moves several; the
    caller holds their row locks)."""
    rows = await conn.fetch(
        """SELECT incident_id, seq, hash, action, actor, ts, reason, NULL::text AS stage,
                  NULL::timestamptz AS met_at, NULL::timestamptz AS warned_at,
                  NULL::timestamptz AS breached_at
           FROM case_log WHERE incident_id = ANY($1::bigint[])
           UNION ALL
           SELECT incident_id, NULL, NULL, NULL, NULL, NULL, NULL, stage, met_at, warned_at,
                  breached_at
           FROM sla_clocks WHERE incident_id = ANY($1::bigint[])
           ORDER BY incident_id, seq""", incident_ids)
    logs: dict[int, list[Any]] = {i: [] for i in incident_ids}
    clock_rows: dict[int, dict[str, Any]] = {i: {} for i in incident_ids}
    for r in rows:
        if r["seq"] is not None:
            logs[r["incident_id"]].append(r)
        else:
            clock_rows[r["incident_id"]][r["stage"]] = r
    return {i: (*_replay(logs[i]), clock_rows[i]) for i in incident_ids}


async def unit_members(conn: Querier, unit_ids: Iterable[str | None]) -> frozenset[str]:
    """Principals known to act for these units: the names of their phones' API tokens
    (revoked ones too: they were members when they acted). Units themselves are ids."""
    ids = sorted({u for u in unit_ids if u})
    if not ids:
        return frozenset()
    rows = await conn.fetch(
        "SELECT DISTINCT name FROM api_tokens WHERE unit_id = ANY($1::text[])", ids)
    return frozenset(str(r["name"]) for r in rows)


async def incident_row(
    conn: Conn, incident_id: int, *, lock: bool = False
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.id = $1"
        + (" FOR UPDATE" if lock else ""),
        incident_id,
    )
    return dict(row) if row is not None else None


async def unit_view(conn: Conn, unit_id: str) -> dict[str, Any]:
    return row_view(
        await conn.fetchrow(f"SELECT {UNIT_COLUMNS} FROM units u WHERE u.id = $1", unit_id)
    )


async def incident_view(conn: Conn, incident_id: int) -> dict[str, Any]:
    return row_view(
        await conn.fetchrow(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.id = $1", incident_id
        )
    )


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of an incident's hash chain, hashed, not yet written."""

    incident_id: int
    seq: int
    action: str
    from_state: str | None
    to_state: str
    actor: str
    at: float
    reason: str | None
    prev_hash: str
    hash: str

    def args(self) -> tuple[Any, ...]:
        """The values of ``INSERT_LOG``'s parameters $1..$10."""
        return (self.incident_id, self.seq, self.action, self.from_state, self.to_state,
                self.actor, ts(self.at), self.reason, self.prev_hash, self.hash)


INSERT_LOG = """INSERT INTO case_log (incident_id, seq, action, from_state, to_state, actor, ts,
                                     reason, prev_hash, hash)
                VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"""


def chain_entry(head: LogHead, incident_id: int, action: str, from_state: str | None,
                to_state: str, actor: str, at: float, reason: str | None) -> LogEntry:
    """The entry that follows ``head`` (the chain's last entry, read under the incident's
    row lock)."""
    seq = head[0] + 1 if head else 1
    prev = head[1] if head else workflow.GENESIS_HASH
    # timestamptz keeps microseconds: hash exactly what is stored, so it can be re-checked.
    at = round(at, 6)
    digest = workflow.entry_hash(
        prev, str(incident_id), seq, action, from_state, to_state, actor, at, reason
    )
    return LogEntry(incident_id, seq, action, from_state, to_state, actor, at, reason, prev,
                    digest)


async def append_log(
    conn: Conn,
    incident_id: int,
    action: str,
    from_state: str | None,
    to_state: str,
    actor: str,
    at: float,
    reason: str | None,
) -> None:
    """Append one entry to the incident's hash chain. Caller holds the incident's row lock."""
    last = await conn.fetchrow(
        "SELECT seq, hash FROM case_log WHERE incident_id = $1 ORDER BY seq DESC LIMIT 1",
        incident_id,
    )
    entry = chain_entry((int(last["seq"]), str(last["hash"])) if last else None,
                        incident_id, action, from_state, to_state, actor, at, reason)
    await conn.execute(INSERT_LOG, *entry.args())
    await conn.execute("UPDATE incidents SET log_head = $2 WHERE id = $1", incident_id,
                       entry.hash)


async def case_log(
    conn: Querier, incident_id: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT seq, action, from_state, to_state, actor, ts, reason, prev_hash, hash "
        "FROM case_log WHERE incident_id = $1 ORDER BY seq",
        incident_id,
    )
    return [row_view(r) for r in rows]
