"""A new case written in one statement: its rows computed first (pure), then written with
its ``incident.opened`` event in one round trip.

Why: an operator's ``POST /api/incidents`` wrote a case in about fifteen round trips (the
row, the report entry, the head, the lock, the clocks, the register step's read, its entry,
the clocks again, the view, the event), each waiting its turn on the hub's one event loop
behind the live feed, ingest and the dispatcher; the event's time on the console was mostly
that wait (docs/PERFORMANCE.md, console, rounds three and four). Nothing in a new case
needs the database to be worked out: its log is empty (the chain starts at the genesis
hash), it has no SLA clock rows yet, no other transaction can see the row before commit,
and its id comes from the sequence. So the case's rows (the incident as it stands after
the register step, its log entries, its clock rows) and its event are computed here and
written by ``write``: one ``INSERT`` of each in one statement, which also records the event
(``outbox_record``). The rows are exactly what the step-by-step path wrote
(tests/test_open_incident.py compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core import outbox
from core.db import Conn, row_view
from core.entities import INCIDENT_COLUMNS
from core.errors import InvalidInput
from core.events import IncidentOpened
from core.geometry import point_in_polygon
from dispatch import sla, sla_clocks, store, workflow

# The new case's id and the level-2 grids whose bounding box holds its point, in one round
# trip (the polygon test is Python's, as ``point_in_polygon`` is the town's one test).
# Sequences are not transactional, so taking the id first loses nothing.
_ID_AND_GRIDS = """
    SELECT 0 AS k, nextval(pg_get_serial_sequence('incidents', 'id')) AS iid,
           NULL::text AS grid, NULL::jsonb AS geometry
    UNION ALL
    SELECT 1, NULL, id, geometry FROM grids
    WHERE $3 AND level = 2 AND $1 BETWEEN min_lon AND max_lon
      AND $2 BETWEEN min_lat AND max_lat"""


async def new_id_and_grid(conn: Conn, lon: float, lat: float, grid_id: str | None
                          ) -> tuple[int, str | None]:
    """The new case's id and its grid (``grid_id`` if given, else the level-2 grid holding
    the point; the first in the bounding box if no polygon holds it)."""
    rows = await conn.fetch(_ID_AND_GRIDS, lon, lat, grid_id is None)
    iid = next(int(r["iid"]) for r in rows if r["k"] == 0)
    return iid, grid_id or grid_containing([r for r in rows if r["k"] == 1], lon, lat)


def grid_containing(rows: Sequence[Any], lon: float, lat: float) -> str | None:
    """Of ``rows`` (``grid``, ``geometry``: the grids whose bounding box holds the point),
    the first whose polygon holds it, else the first one, else None."""
    for r in rows:
        if point_in_polygon(lon, lat, r["geometry"]["coordinates"][0]):
            return str(r["grid"])
    return str(rows[0]["grid"]) if rows else None


@dataclass(frozen=True, slots=True)
class NewCase:
    """A new case's rows as they are written: the incident (its view: what the event and
    every client see), its log entries in order, its SLA clocks."""

    view: dict[str, Any]
    opened_at: datetime  # the view's ``opened_at`` and ``updated_at`` as stored
    entries: list[store.LogEntry]
    clocks: sla_clocks.ClockValues


def new_case(iid: int, now: float, *, category: str, qualification: str, priority: int,
             title: str, description: str, lon: float, lat: float, grid_id: str | None,
             source: str, reporter: str, register_as: str | None) -> NewCase:
    """The rows of a case reported by ``reporter`` at ``now`` (no I/O). ``register_as``:
    who registers it in the same breath (alarm and operator reports, already verified);
    None leaves it reported, for an operator to register."""
    opened = store.ts(now)
    report = store.chain_entry(None, iid, "report", None, workflow.INITIAL_STATE, reporter,
                               now, None)
    entries = [report]
    case = workflow.CaseState()
    inc = {"opened_at": opened, "category": category, "priority": priority}
    clocks = sla_clocks.clock_values(inc, case, "report", now, {})
    if register_as is not None:
        # The register step as ``service._step`` takes it: the case replayed from its log
        # is the initial state (the report entry is not a move).
        try:
            after = workflow.apply(case, "register", register_as, now, None)
        except workflow.TransitionError as e:
            raise InvalidInput(e.message, code=e.code) from e
        entries.append(store.chain_entry((report.seq, report.hash), iid, "register",
                                         case.state, after.state, register_as, now, None))
        clocks = sla_clocks.clock_values(inc, after, "register", now, clocks.next_rows({}))
        case = after
    view = {
        "id": iid, "category": category, "priority": priority,
        "qualification": qualification, "title": title, "description": description,
        "lon": lon, "lat": lat, "grid_id": grid_id, "source": source, "reporter": reporter,
        "state": case.state, "opened_at": opened.timestamp(),
        "updated_at": opened.timestamp(), "assigned_unit": None,
        "rework_count": case.rework_count, "extension_count": case.extension_count,
        "handler": case.handler, "alarms_cleared": False, "sla": clocks.summary,
    }
    return NewCase(view, opened, entries, clocks)


# The incident, its log entries and its clock rows, and its event, in one statement (one
# implicit transaction when the caller has none). Foreign keys are checked at the end of
# the statement, when the incident's row is there. The event is recorded last, as
# ``outbox.record`` asks: its lock is held until commit.
_WRITE = f"""
    WITH inc AS (
        INSERT INTO incidents (id, category, priority, qualification, title, description,
                               lon, lat, grid_id, source, reporter, state, opened_at,
                               updated_at, rework_count, extension_count, handler, sla,
                               log_head)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16,
                $17, $18)
        RETURNING *),
    entries AS (
        INSERT INTO case_log (incident_id, seq, action, from_state, to_state, actor, ts,
                              reason, prev_hash, hash)
        SELECT $1, e.seq, e.action, e.from_state, e.to_state, e.actor, e.ts, e.reason,
               e.prev_hash, e.hash
        FROM unnest($19::int[], $20::text[], $21::text[], $22::text[], $23::text[],
                    $24::timestamptz[], $25::text[], $26::text[], $27::text[])
             WITH ORDINALITY AS e (seq, action, from_state, to_state, actor, ts, reason,
                                   prev_hash, hash, n)
        ORDER BY e.n),
    clocks AS (
        INSERT INTO sla_clocks (incident_id, stage, started_at, deadline, warn_at, met_at)
        SELECT $1, c.stage, $13, c.deadline, c.warn_at, c.met_at
        FROM unnest($28::text[], $29::timestamptz[], $30::timestamptz[], $31::timestamptz[])
             AS c (stage, deadline, warn_at, met_at))
    SELECT {INCIDENT_COLUMNS}, outbox_record($32, $33, $34, $35) AS seq FROM inc i"""


async def write(conn: Conn, case: NewCase) -> dict[str, Any]:
    """Writes ``case`` and records its ``incident.opened`` event; returns the incident's
    view as written."""
    v, es, c = case.view, case.entries, case.clocks
    event = IncidentOpened(incident=v)
    row = await conn.fetchrow(
        _WRITE,
        v["id"], v["category"], v["priority"], v["qualification"], v["title"],
        v["description"], v["lon"], v["lat"], v["grid_id"], v["source"], v["reporter"],
        v["state"], case.opened_at, v["rework_count"], v["extension_count"],
        v["handler"], v["sla"], es[-1].hash,
        [e.seq for e in es], [e.action for e in es], [e.from_state for e in es],
        [e.to_state for e in es], [e.actor for e in es], [store.ts(e.at) for e in es],
        [e.reason for e in es], [e.prev_hash for e in es], [e.hash for e in es],
        list(sla.STAGES), c.deadlines, c.warn_ats, c.mets,
        event.kind, event.payload(), outbox.EVENTS_LOCK_KEY, outbox.CHANNEL)
    assert row is not None
    view = row_view(row)
    del view["seq"]
    return view
