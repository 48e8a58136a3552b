"""Scheduled jobs, listed in one place (APScheduler 3.x on the hub's event loop; the
dispatch role's on the dispatch process's loop when it runs apart, hub/dispatch_process.py).

Per-incident SLA timers are not here: they live in the database and an in-process timer
heap (dispatch). Nor is the ingest role's periodic work (device and rule reload, device
clocks): ingest/service.py runs it, so that ``python -m ingest`` has it too. These are the
periodic housekeeping and figures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from core import clock
from core.db import fetch_one
from core.settings import Settings
from dispatch import inspection_schedule, reports, sla_settings
from dispatch.leader import Dispatcher
from hub import admin_roster
from hub.kpi_terms import INGEST_RATE_WINDOW_S, ONLINE_INTERVALS
from hub.state import Hub
from ingest import retention

log = logging.getLogger("hub.jobs")

KPI_INTERVAL_S = 10


class JobHost(Protocol):
    """What the jobs of the dispatch role (and ``sla.reload``) use: a hub process's ``Hub``,
    or the dispatch process's host (hub/dispatch_process.py), which has no web part."""

    settings: Settings
    pool: asyncpg.Pool
    dispatcher: Dispatcher | None


async def refresh_kpis(hub: Hub) -> None:
    """The console's figures: devices online, cases, today's SLA results, ingest rate."""
    row = await fetch_one(
        hub.pool,
        f"""SELECT count(*) AS devices,
                  count(*) FILTER (WHERE l.ts > now() - make_interval(
                      secs => d.interval_s * {ONLINE_INTERVALS})) AS online
           FROM devices d
           LEFT JOIN LATERAL (SELECT max(ts) AS ts FROM telemetry_latest t
                              WHERE t.device_id = d.id) l ON true
           WHERE d.revoked_at IS NULL""")
    hub.kpis.update(devices=row["devices"], devices_online=row["online"])
    cases = await hub.pool.fetch(
        "SELECT priority, count(*) AS n FROM incidents WHERE state NOT IN "
        "('closed', 'evaluated', 'archived', 'cancelled') GROUP BY priority")
    # "Today" is the town's day (settings.town_tz), not UTC's.
    sla_today = await fetch_one(
        hub.pool,
        """SELECT count(*) FILTER (WHERE stage = 'resolve') AS closed,
                  count(*) FILTER (WHERE stage = 'resolve' AND met_at <= deadline) AS on_time,
                  percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM
                      met_at - started_at)) FILTER (WHERE stage = 'arrive') AS p90_arrive_s
           FROM sla_clocks
           WHERE met_at >= date_trunc('day', now(), $1)
             AND stage IN ('resolve', 'arrive')""", hub.settings.town_tz)
    points = await hub.pool.fetchval(
        f"SELECT count(*) FROM telemetry WHERE ts > now() - interval '{INGEST_RATE_WINDOW_S} s'")
    alarms = await hub.pool.fetchval("SELECT count(*) FROM alarms WHERE state <> 'cleared'")
    closed = sla_today["closed"]
    hub.kpis.update(
        open_cases={str(r["priority"]): r["n"] for r in cases},
        closed_today=closed,
        on_time_rate_today=(sla_today["on_time"] / closed) if closed else None,
        p90_response_s_today=sla_today["p90_arrive_s"],
        active_alarms=alarms,
        ingest_points_per_s=round(points / INGEST_RATE_WINDOW_S, 1),
        updated_at=clock.now(),
    )


def _leads(hub: JobHost) -> bool:
    return hub.dispatcher is not None and hub.dispatcher.is_leader


async def rollups(hub: JobHost) -> None:
    if not _leads(hub):
        return
    for r in retention.ROLLUPS:
        await retention.run_rollup(hub.pool, r)


async def apply_retention(hub: JobHost) -> None:
    if not _leads(hub):
        return
    s = hub.settings
    for table, days in (("telemetry", s.retention_telemetry_days),
                        ("positions", s.retention_positions_days),
                        ("telemetry_1m", s.retention_rollup_1m_days),
                        ("telemetry_1h", s.retention_rollup_1h_days)):
        await retention.drop_old_chunks(hub.pool, table, timedelta(days=days))
    await hub.pool.execute(
        "DELETE FROM dead_letters WHERE received_at < now() - make_interval(days => $1)",
        s.retention_dead_letters_days)


async def erase_contacts(hub: JobHost) -> None:
    """Citizens' contact data past its retention (hub/contacts.py)."""
    if _leads(hub):
        from hub import contacts

        await contacts.erase_due(hub.pool, datetime.now(UTC))


async def monthly_draws(hub: JobHost) -> None:
    if _leads(hub):
        await inspection_schedule.scheduled_draw(hub.pool, clock.now())


async def patrol_rollup(hub: JobHost) -> None:
    if _leads(hub):
        await reports.rollup_patrol(hub.pool, clock.now())


async def purge_auth(hub: JobHost) -> None:
    """Expired sessions and login failures older than the rate-limit window."""
    if _leads(hub):
        from hub import auth

        await auth.purge(hub.pool, hub.settings.login_failure_window_s)


async def duty_roster(hub: JobHost) -> None:
    """Units on or off duty as their shifts say, at the shift boundaries (hub/admin_roster.py)."""
    if _leads(hub):
        await admin_roster.apply_schedule(hub.pool, hub.settings.town_tz)


async def field_upkeep(hub: Hub) -> None:
    """The field app's retention: evidence photos past their time, old idempotency keys."""
    from hub import field_idempotency, photos

    gone = await photos.purge(hub.pool, hub.settings)
    if gone:
        log.info("photo retention: %d photos removed", gone)
    await field_idempotency.purge(hub.pool, hub.settings.field_idempotency_keep_s)


async def replay_snapshot(hub: JobHost) -> None:
    """The console's picture for after-action replay (hub/replay_store.py), when the newest
    saved one is ``replay_snapshot_s`` old: judged from the table, so a leader that just took
    over (or came up) saves at its first check and keeps its predecessor's cadence."""
    if not _leads(hub):
        return
    from hub import replay_store

    async with hub.pool.acquire() as conn:
        if await replay_store.snapshot_due(conn, hub.settings.replay_snapshot_s):
            await replay_store.save_snapshot(conn)
            await replay_store.prune(conn, hub.settings.replay_keep_days)


async def reload_sla(hub: JobHost) -> None:
    """SLA edits made through another process (hub/sla_api.py) come into force here."""
    await sla_settings.load_settings(hub.pool, hub.settings)


# Minute buckets are final a minute after they close; running every 30 s keeps charts at
# most ~90 s behind. Retention deals in whole days: hourly is plenty.
ROLLUP_INTERVAL_S = 30
PATROL_ROLLUP_S = 3600
DAY_S = 86400
RETENTION_INTERVAL_S = 3600
# Expired sessions are already refused; purging them is only about table size.
AUTH_PURGE_S = 600
# How often the dispatch leader checks whether a replay snapshot is due (one indexed read).
REPLAY_CHECK_S = 5.0


def _every(seconds: float) -> Callable[[Settings], float]:
    return lambda _settings: seconds


# (name, coroutine function, interval from settings, role that runs it)
JOBS: list[tuple[str, Any, Callable[[Settings], float], str]] = [
    ("kpi.refresh", refresh_kpis, _every(KPI_INTERVAL_S), "web"),
    # Web nodes compute case deadlines too (case steps), the dispatcher its own: every
    # process ("any" role) keeps the SLA configuration current.
    ("sla.reload", reload_sla, lambda s: s.sla_reload_s, "any"),
    # Upkeep of shared tables: done by the dispatch leader's process only.
    ("timeseries.rollups", rollups, _every(ROLLUP_INTERVAL_S), "dispatch"),
    ("timeseries.retention", apply_retention, _every(RETENTION_INTERVAL_S), "dispatch"),
    ("auth.purge", purge_auth, _every(AUTH_PURGE_S), "dispatch"),
    # Retention is in days; hourly keeps a contact at most an hour past its date.
    ("contacts.retention", erase_contacts, _every(RETENTION_INTERVAL_S), "dispatch"),
    # Mileage and duty time per unit and day, for the assessment reports.
    ("reports.patrol_rollup", patrol_rollup, _every(PATROL_ROLLUP_S), "dispatch"),
    # Photos live on the web nodes' (shared) photo directory; retention is in days.
    ("field.retention", field_upkeep, _every(RETENTION_INTERVAL_S), "web"),
    # "Double random": the draw itself skips a matter already drawn this month (and the first
    # run only announces the draws: a commitment comes before its draw), so a
    # daily check makes it monthly and catches up after downtime.
    ("inspections.monthly_draw", monthly_draws, _every(DAY_S), "dispatch"),
    ("units.duty_roster", duty_roster, _every(admin_roster.SCHEDULE_CHECK_S), "dispatch"),
    # After-action replay starts from these pictures: checked often, so the first is saved
    # within REPLAY_CHECK_S of a leader coming up and a replay covers nearly all its time.
    ("replay.snapshot", replay_snapshot,
     lambda s: min(REPLAY_CHECK_S, s.replay_snapshot_s), "dispatch"),
]


def start(hub: JobHost, roles: frozenset[str]) -> AsyncIOScheduler:
    """The jobs of ``roles`` (those this process runs) and every process's, on ``hub``."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    for name, fn, interval, role in JOBS:
        if role != "any" and role not in roles:
            continue
        every_s = interval(hub.settings)
        scheduler.add_job(fn, "interval", seconds=every_s, args=[hub], id=name, name=name,
                          max_instances=1, coalesce=True, misfire_grace_time=max(1, int(every_s)))
    scheduler.start()
    return scheduler
