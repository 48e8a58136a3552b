"""Scheduled jobs, listed in one place (APScheduler 3.x on the hub's event loop).

Per-incident SLA timers are not here: they live in the database and an in-process timer
heap (dispatch). These are the periodic housekeeping and figures.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

if TYPE_CHECKING:
    from hub.app import Hub

log = logging.getLogger("hub.jobs")

# A device is online when it reported within this many of its own intervals: one missed
# reading is noise, three in a row is a device that is down.
ONLINE_INTERVALS = 3
KPI_INTERVAL_S = 10
REGISTRY_RELOAD_S = 30


async def refresh_kpis(hub: Hub) -> None:
    row = await hub.pool.fetchrow(
        f"""SELECT count(*) AS devices,
                  count(*) FILTER (WHERE l.ts > now() - make_interval(
                      secs => d.interval_s * {ONLINE_INTERVALS})) AS online
           FROM devices d
           LEFT JOIN LATERAL (SELECT max(ts) AS ts FROM telemetry_latest t
                              WHERE t.device_id = d.id) l ON true
           WHERE d.revoked_at IS NULL""")
    hub.kpis.update(devices=row["devices"], devices_online=row["online"])


async def reload_registry(hub: Hub) -> None:
    if hub.ingest is not None:
        await hub.ingest.registry.load(hub.pool)


JOBS: list[tuple[str, Any, int]] = [
    ("kpi.refresh", refresh_kpis, KPI_INTERVAL_S),
    ("ingest.registry_reload", reload_registry, REGISTRY_RELOAD_S),
]


def start(hub: Hub) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")
    for name, fn, every_s in JOBS:
        scheduler.add_job(fn, "interval", seconds=every_s, args=[hub], id=name, name=name,
                          max_instances=1, coalesce=True, misfire_grace_time=every_s)
    scheduler.start()
    return scheduler
