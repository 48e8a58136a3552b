"""After-action replay's I/O: saved pictures, and the records a replay folds.

``save_snapshot`` writes the console's open picture to ``replay_snapshots`` (a job of the
dispatch leader, every ``HUB_REPLAY_SNAPSHOT_S``); ``picture_at`` rebuilds the picture at a
past time from the latest snapshot at or before it plus the events and fixes after it
(hub/replay_fold.py); ``chunk`` hands the browser's playback the events and fixes of a
span; ``alerts_at`` and ``kpis_at`` are the supervisor strip and the KPI tiles the console
showed then. Every time here is UNIX seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from core import clock
from core.db import Conn, fetch_one, row_view
from core.entities import ALARM_COLUMNS, INCIDENT_COLUMNS, UNIT_COLUMNS
from core.errors import NotFound
from core.events import Envelope
from hub import replay_fold
from hub.kpi_terms import INGEST_RATE_WINDOW_S, ONLINE_INTERVALS
from hub.replay_fold import Fix, Picture

# Events read per round trip while folding: large enough that a 5-minute stretch of a busy
# town is a few round trips, small enough to bound the memory of one read.
EVENT_READ_BATCH = 2000


async def save_snapshot(conn: Conn) -> tuple[int, float]:
    """Save the open picture and return (seq, taken_at).

    One repeatable-read transaction: the first statement fixes the snapshot, so its clock
    is at or after the commit of every event the picture holds, and before any event it
    lacks committed."""
    async with conn.transaction(isolation="repeatable_read"):
        head = await fetch_one(
            conn,
            "SELECT extract(epoch FROM clock_timestamp())::float8 AS taken_at, "
            "coalesce((SELECT max(seq) FROM events), 0) AS seq")
        alarms = await conn.fetch(
            f"SELECT {ALARM_COLUMNS} FROM alarms a WHERE a.state <> 'cleared'")
        incidents = await conn.fetch(
            f"SELECT {INCIDENT_COLUMNS} FROM incidents i "
            "WHERE i.state NOT IN ('archived', 'cancelled')")
        units = await conn.fetch(f"SELECT {UNIT_COLUMNS} FROM units u")
        state = {
            "alarms": {str(r["id"]): row_view(r) for r in alarms},
            "incidents": {str(r["id"]): row_view(r) for r in incidents},
            "units": {str(r["id"]): row_view(r) for r in units},
        }
        await conn.execute(
            "INSERT INTO replay_snapshots (taken_at, seq, state) "
            "VALUES (to_timestamp($1), $2, $3)", head["taken_at"], head["seq"], state)
    return int(head["seq"]), float(head["taken_at"])


async def snapshot_due(conn: Conn, every_s: float) -> bool:
    """True when no picture was saved in the last ``every_s`` seconds (less a tenth: the
    check runs every ``every_s`` too, and one a few milliseconds early must not skip a
    whole period)."""
    return bool(await conn.fetchval(
        "SELECT NOT EXISTS (SELECT 1 FROM replay_snapshots "
        "WHERE taken_at > clock_timestamp() - make_interval(secs => $1 * 0.9))", every_s))


async def prune(conn: Conn, keep_days: float) -> int:
    """Drop snapshots older than ``keep_days``, keeping the newest of those (a replay of the
    oldest kept day still has a picture to start from). Returns how many went."""
    status = await conn.execute(
        """DELETE FROM replay_snapshots WHERE taken_at < now() - make_interval(days => $1)
           AND id <> (SELECT id FROM replay_snapshots
                      WHERE taken_at < now() - make_interval(days => $1)
                      ORDER BY taken_at DESC LIMIT 1)""", keep_days)
    return int(status.split()[-1])


async def history(conn: Conn) -> dict[str, Any]:
    """The span a replay can cover: from the first saved picture to now."""
    row = await fetch_one(
        conn,
        "SELECT extract(epoch FROM min(taken_at))::float8 AS first, count(*) AS snapshots "
        "FROM replay_snapshots")
    return {"from": row["first"], "to": clock.now(), "snapshots": row["snapshots"]}


async def _events_after(conn: Conn, seq: int) -> AsyncIterator[tuple[int, float, Any]]:
    while True:
        rows = await conn.fetch(
            "SELECT seq, extract(epoch FROM ts)::float8 AS ts, kind, payload FROM events "
            "WHERE seq > $1 ORDER BY seq LIMIT $2", seq, EVENT_READ_BATCH)
        for r in rows:
            yield r["seq"], r["ts"], r
        if len(rows) < EVENT_READ_BATCH:
            return
        seq = rows[-1]["seq"]


async def latest_fixes(conn: Conn, newer_than: dict[str, float], until: float
                       ) -> list[Fix]:
    """The newest fix with ``ts <= until`` of each unit in ``newer_than`` ({unit: the
    shown fix's ts}), where it is newer than that: one index probe per unit (positions_key
    is (unit_id, ts DESC)), not a scan of every fix in the span."""
    rows = await conn.fetch(
        """SELECT u.id AS unit_id, extract(epoch FROM p.ts)::float8 AS ts, p.lon, p.lat,
                  p.speed, p.heading
           FROM unnest($1::text[], $2::float8[]) AS u(id, after)
           CROSS JOIN LATERAL (
               SELECT ts, lon, lat, speed, heading FROM positions
               WHERE unit_id = u.id AND ts > to_timestamp(u.after)
                 AND ts <= to_timestamp($3)
               ORDER BY ts DESC LIMIT 1) p""",
        list(newer_than), list(newer_than.values()), until)
    return [Fix(r["unit_id"], r["ts"], r["lon"], r["lat"], r["speed"], r["heading"])
            for r in rows]


async def picture_at(conn: Conn, at: float, *, start_before: float | None = None
                     ) -> Picture:
    """The console's picture at ``at``, from the latest snapshot at or before it (or at or
    before ``start_before``: any snapshot before ``at`` gives the same picture, only with a
    longer fold)."""
    snap = await conn.fetchrow(
        "SELECT seq, extract(epoch FROM taken_at)::float8 AS taken_at, state "
        "FROM replay_snapshots WHERE taken_at <= to_timestamp($1) "
        "ORDER BY taken_at DESC LIMIT 1", min(at, start_before or at))
    if snap is None:
        raise NotFound("no saved picture at or before this time: replay starts at the "
                       "first snapshot (GET /api/replay/history)", code="replay.no_history")
    pic = replay_fold.start(snap["state"], snap["seq"], snap["taken_at"])
    # Fold chunk by chunk until an event after ``at`` (or the end of the table) is reached.
    batch: list[tuple[int, float, Any]] = []
    async for seq, ts, row in _events_after(conn, pic.seq):
        batch.append((seq, ts, row["payload"]))
        if len(batch) >= EVENT_READ_BATCH:
            reached = replay_fold.apply_events(pic, batch, at)
            batch = []
            if reached:
                break
    replay_fold.apply_events(pic, batch, at)
    # A fix older than the snapshot may have been stored after it: the lower bound is each
    # unit's shown fix, not the snapshot's time.
    shown = {uid: float(u.get("position_ts") or 0.0) for uid, u in pic.state["units"].items()}
    fixes = await latest_fixes(conn, shown, at)
    return replay_fold.advance(pic, [], fixes, at)


async def chunk(conn: Conn, *, after_seq: int, clock: float, start: float, end: float,
                step_s: float, max_events: int, unit_ids: list[str]) -> dict[str, Any]:
    """The events and fixes of the span (start, end] for the browser's playback.

    Events: those after ``after_seq`` whose effective time (running max of ``ts`` from
    ``clock``, hub/replay_fold.py) is <= ``end``, at most ``max_events``; if the cap cut the
    span, ``end`` comes back earlier (the last event's effective time). Fixes: the newest of
    each of ``unit_ids`` in every ``step_s`` of the span (the live feed too sends a unit's
    position at most every second), oldest first, as ``[unit, ts, lon, lat, speed,
    heading]``."""
    rows = await conn.fetch(
        "SELECT seq, extract(epoch FROM ts)::float8 AS ts, kind, payload FROM events "
        "WHERE seq > $1 ORDER BY seq LIMIT $2", after_seq, max_events + 1)
    events: list[bytes] = []
    effective = clock
    for r in rows:
        at = max(effective, r["ts"])
        if at > end:
            break
        if len(events) == max_events:
            end = effective  # the cap cut the span: it ends with the last event sent
            break
        events.append(Envelope.make(r["seq"], r["ts"], r["kind"], r["payload"]).wire)
        effective = at
    # The newest fix of each unit in each step of the span: one index probe per (unit,
    # step) on positions_key (unit_id, ts DESC), not a sort of every fix in the span (at
    # 60x, 2,000 units, 30 s steps: 8,000 probes instead of sorting 240,000 rows; 1.0 s
    # against 3.1 s under load, docs/PERFORMANCE.md).
    fixes = await conn.fetch(
        """SELECT u.id AS unit_id, extract(epoch FROM p.ts)::float8 AS ts, p.lon, p.lat,
                  p.speed, p.heading
           FROM unnest($4::text[]) AS u(id)
           CROSS JOIN generate_series(0, ceil(($2::float8 - $1::float8) / $3::float8)::int - 1)
                      AS b(k)
           CROSS JOIN LATERAL (
               SELECT ts, lon, lat, speed, heading FROM positions
               WHERE unit_id = u.id AND ts > to_timestamp($1::float8 + b.k * $3::float8)
                 AND ts <= to_timestamp(least($1::float8 + (b.k + 1) * $3::float8,
                                              $2::float8))
               ORDER BY ts DESC LIMIT 1) p
           ORDER BY p.ts""", start, end, step_s, unit_ids)
    return {
        "start": start, "end": end,
        "events": events,
        "positions": [[r["unit_id"], r["ts"], r["lon"], r["lat"], r["speed"], r["heading"]]
                      for r in fixes],
    }


async def alerts_at(conn: Conn, at: float) -> list[dict[str, Any]]:
    """Supervisor alerts open at ``at`` (raised by then, not yet acknowledged), newest
    first, as GET /api/supervisor/alerts lists the open ones now."""
    rows = await conn.fetch(
        "SELECT * FROM supervisor_alerts WHERE created_at <= to_timestamp($1) "
        "AND (acked_at IS NULL OR acked_at > to_timestamp($1)) ORDER BY id DESC LIMIT 100",
        at)
    return [row_view(r) for r in rows]


async def kpis_at(conn: Conn, at: float, town_tz: str) -> dict[str, Any]:
    """The server-computed KPI tiles as they were at ``at``: the figures of
    ``hub.jobs.refresh_kpis`` (same definitions: hub/kpi_terms.py), over the records up to
    ``at``."""
    devices = await fetch_one(
        conn,
        f"""SELECT count(*) AS devices,
                  count(*) FILTER (WHERE l.ts IS NOT NULL) AS online
           FROM devices d
           LEFT JOIN LATERAL (
               SELECT max(ts) AS ts FROM telemetry t WHERE t.device_id = d.id
               AND t.ts > to_timestamp($1)
                          - make_interval(secs => d.interval_s * {ONLINE_INTERVALS})
               AND t.ts <= to_timestamp($1)) l ON true
           WHERE d.created_at <= to_timestamp($1)
             AND (d.revoked_at IS NULL OR d.revoked_at > to_timestamp($1))""", at)
    sla = await fetch_one(
        conn,
        """SELECT count(*) FILTER (WHERE stage = 'resolve') AS closed,
                  count(*) FILTER (WHERE stage = 'resolve' AND met_at <= deadline) AS on_time,
                  percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM
                      met_at - started_at)) FILTER (WHERE stage = 'arrive') AS p90_arrive_s
           FROM sla_clocks
           WHERE met_at >= date_trunc('day', to_timestamp($1), $2)
             AND met_at <= to_timestamp($1) AND stage IN ('resolve', 'arrive')""",
        at, town_tz)
    points = await conn.fetchval(
        "SELECT count(*) FROM telemetry WHERE ts > to_timestamp($1) - make_interval(secs => $2)"
        " AND ts <= to_timestamp($1)", at, INGEST_RATE_WINDOW_S)
    closed = sla["closed"]
    return {
        "devices": devices["devices"], "devices_online": devices["online"],
        "closed_today": closed,
        "on_time_rate_today": (sla["on_time"] / closed) if closed else None,
        "p90_response_s_today": sla["p90_arrive_s"],
        "ingest_points_per_s": round(points / INGEST_RATE_WINDOW_S, 1),
        "updated_at": at,
    }
