"""What every route of a hub process needs (``Hub``, on ``app.state.hub``), and the typed
dependency that hands it to a route: ``hub: HubDep`` in the route's parameters.

Kept apart from hub/app.py (which imports every router) so that routers can name the type
without an import cycle.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request

from core.bus import Bus
from core.outbox import EventFeed
from core.settings import Settings
from dispatch.geo import RoadGraph
from dispatch.leader import Dispatcher
from dispatch.model import DispatchPolicy
from hub.dispatch_child import DispatchChild
from hub.live import LiveFeed, LiveState
from ingest.service import IngestRole


@dataclass
class Hub:
    """Everything the routes need, built in the lifespan and kept on ``app.state.hub``."""

    settings: Settings
    roles: frozenset[str]
    bus: Bus
    pool: asyncpg.Pool
    live: LiveState
    feed: LiveFeed
    ingest: IngestRole | None = None
    dispatcher: Dispatcher | None = None  # the dispatch role on this process's loop, or
    dispatch_child: DispatchChild | None = None  # ... in a child process (the default)
    event_feed: EventFeed | None = None  # committed events -> ``bus`` (core/outbox.py)
    # What every node decides with (an operator's override on a web node too): the policy
    # from settings and the town's road graph, loaded once at start.
    dispatch_policy: DispatchPolicy = field(default_factory=DispatchPolicy)
    road_graph: RoadGraph | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    kpis: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    # GET /api/town's answer, built on first use; an import of the town clears it.
    town_cache: dict[str, Any] | None = None


def get_hub(request: Request) -> Hub:
    """The process's ``Hub`` (built in the app's lifespan)."""
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]
