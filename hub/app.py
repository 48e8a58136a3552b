"""The FastAPI app factory and its lifespan.

The lifespan starts, names and cancels every background task of the roles this process
runs (all of them by default): the event feed (every role), ingest, the dispatcher and the
scheduled jobs. The dispatcher runs in a child process of its own when this process
serves other roles too (``Settings.dispatch_own_process``, hub/dispatch_child.py).
Nothing starts at import time; ``create_app(settings)`` is all there is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from core.bus import Bus
from core.db import connect, create_pool, migrate
from core.heap import settle_gc
from core.outbox import EventFeed
from core.settings import Settings
from dispatch import decisions, sla_clocks
from dispatch.leader import Dispatcher
from hub import (
    admin_devices,
    admin_pages,
    admin_town,
    admin_units,
    admin_users,
    api,
    audit_api,
    config_reload,
    contacts,
    errors,
    field_api,
    field_enrol,
    field_feed,
    field_views,
    inspections_api,
    jobs,
    login,
    mqtt_accounts_api,
    open311,
    open311_keys,
    photos,
    replay_api,
    reports_api,
    rules_api,
    senml_map_api,
    sla_api,
    views,
)
from hub.access import AccessMiddleware
from hub.dispatch_child import DispatchChild
from hub.dispatch_child import wanted as dispatch_child_wanted
from hub.limits import BodySizeLimit
from hub.live import LiveFeed, LiveState
from hub.positions import PositionFeed
from hub.state import Hub
from ingest.service import IngestRole

log = logging.getLogger("hub.app")

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
ALL_ROLES = frozenset({"ingest", "dispatch", "web"})
# The hub says it is ready once its dispatch process runs its role (1-3 s), or after this
# long: the web and ingest do not wait for dispatch, whose start is retried meanwhile.
DISPATCH_START_S = 30.0


def create_app(settings: Settings, roles: frozenset[str] = ALL_ROLES,
               dispatch_child: DispatchChild | None = None) -> FastAPI:
    """The app serving ``roles``. ``dispatch_child``: the dispatch process's supervisor,
    when the caller started its child already (``DispatchChild.spawn_early``); otherwise
    the lifespan makes one if ``roles`` want it (``dispatch_child.wanted``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        conn = await connect(settings.database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        child = dispatch_child
        if child is None and dispatch_child_wanted(settings, roles):
            child = DispatchChild(settings)
        if child is not None:
            # First, so that it starts while this process does (hub/dispatch_child.py).
            await child.start()
        pool = await create_pool(settings.database_url, settings.db_pool_min,
                                 settings.db_pool_max)
        await sla_clocks.configure(pool, settings)
        bus = Bus()
        live = LiveState(bus)
        await live.load(pool)
        hub = Hub(settings=settings, roles=roles, bus=bus, pool=pool, live=live,
                  feed=LiveFeed(live, bus, pool, replay_limit=settings.feed_replay_limit,
                                queue_size=settings.feed_client_queue,
                                tick_s=settings.feed_tick_s))
        hub.dispatch_child = child
        hub.dispatch_policy = decisions.policy_from_settings(settings)
        if roles & {"dispatch", "web"}:
            hub.road_graph = await decisions.load_road_graph(pool)
        app.state.hub = hub
        config_reload.start(hub)  # before the feed: no change published unheard
        event_feed = hub.event_feed = EventFeed(settings.database_url, bus)
        hub.tasks.append(asyncio.create_task(event_feed.run(), name="core.event_feed"))
        if "dispatch" in roles and child is None:
            hub.dispatcher = Dispatcher(settings, pool, bus, hub.road_graph)
            await hub.dispatcher.start()
        if "ingest" in roles:
            hub.ingest = IngestRole(settings, pool)
            await hub.ingest.start()
        positions: PositionFeed | None = None
        if "web" in roles:
            if hub.ingest is not None and not hub.ingest.scaled_out:
                # This process sees every fix: straight from the pipeline.
                assert hub.ingest.pipeline is not None
                hub.ingest.pipeline.on_position = live.on_position
            else:
                # It sees none or a share of them: from the broker (hub/positions.py).
                positions = PositionFeed(settings, live.on_position)
                positions.start()
        # The dispatch role's jobs run where its leader runs (hub/dispatch_process.py).
        scheduler = jobs.start(hub, roles - {"dispatch"} if child is not None else roles)
        if child is not None and not await child.wait_started(DISPATCH_START_S):
            log.error("the dispatch process has not started after %.0f s; serving without "
                      "it while it is retried", DISPATCH_START_S)
        settle_gc()
        hub.ready = True
        log.info("hub ready: roles %s, http://%s:%s/", ",".join(sorted(roles)),
                 settings.http_host, settings.http_port)
        try:
            yield
        finally:
            hub.ready = False
            scheduler.shutdown(wait=False)
            if positions is not None:
                positions.stop()
            if hub.ingest:
                await hub.ingest.stop()
            if hub.dispatcher:
                await hub.dispatcher.stop()
            if hub.dispatch_child:
                await hub.dispatch_child.stop()
            for t in hub.tasks:
                t.cancel()
            await asyncio.gather(*hub.tasks, return_exceptions=True)
            await pool.close()

    app = FastAPI(title="gridhub", version="0.1.0", lifespan=lifespan,
                  description="Township command-center hub: telemetry, alarms, dispatch, cases.")
    errors.install(app)
    # Outermost first: an oversized body is refused before anything reads it; then every
    # route is authorised by the one policy table (hub/access.py).
    app.add_middleware(AccessMiddleware)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes,
                       wider={"/api/field/photos": settings.photo_max_bytes})
    app.include_router(login.router)
    app.include_router(api.router)
    app.include_router(open311.router)
    app.include_router(open311_keys.router)
    app.include_router(contacts.router)
    app.include_router(reports_api.router)
    app.include_router(inspections_api.router)
    app.include_router(rules_api.router)
    app.include_router(sla_api.router)
    app.include_router(mqtt_accounts_api.router)
    app.include_router(senml_map_api.router)
    app.include_router(audit_api.router)
    for admin in (admin_devices, admin_units, admin_users, admin_town, admin_pages):
        app.include_router(admin.router)
    app.include_router(replay_api.router)
    app.include_router(views.router)
    for field_router in (field_enrol.router, field_api.router, field_feed.router,
                         photos.router, field_views.router):
        app.include_router(field_router)
    app.mount("/static", StaticFiles(directory=FRONTEND / "static"), name="static")
    views.mount_vendor(app)
    return app
