"""Configuration changed by any process, put in force in this one: the bus's
``sla.config_changed``, ``rule.changed`` and ``town.changed`` events.

Every hub process runs the event feed (core/outbox.EventFeed), so an edit served by one
web node reaches every other process within milliseconds of its commit:

- ``sla.config_changed``: the SLA limits, warn share and working calendar are loaded again
  (``sla_settings.load_settings``). The open cases' clocks were already recomputed in the
  edit's transaction (dispatch/sla_retime.py); what this process computes from now on
  (case steps, reports) uses the new configuration.
- ``rule.changed``: a process with an ingest role reloads its rules and reconciles its
  evaluator, as the serving process does (hub/rules_api.py).
- ``town.changed``: this process's cached ``/api/town`` answer is dropped at once (before
  an open console, told by the same event, asks for it again), and a process with a web or
  dispatch role loads ``hub.road_graph`` again (field navigation, operators' overrides and
  redirects), so routes and recommendations use the imported roads. The dispatch leader
  reloads its own graph in its event loop (dispatch/leader.py), so the cases it plans
  after the import's event are planned on the new roads.

The periodic reloads (hub/jobs.py ``sla.reload``, ingest/service.py's registry reload)
stay as a backstop. The listener only notes which kinds arrived; one task does the reloads
in order, each kind once however many of its events came meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from core.events import Envelope
from dispatch import decisions, sla_settings
from hub.state import Hub

log = logging.getLogger("hub.config_reload")

KINDS = ("sla.config_changed", "rule.changed", "town.changed")


class ConfigReloader:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.pending: set[str] = set()
        self.wake = asyncio.Event()
        # Reloads done, by kind (tests and logs read them).
        self.done: dict[str, int] = dict.fromkeys(KINDS, 0)

    def on_event(self, env: Envelope) -> None:
        """Bus listener (synchronous, called for every event)."""
        if env.kind == "town.changed":
            self.hub.town_cache = None
        if env.kind in KINDS:
            self.pending.add(env.kind)
            self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            kinds, self.pending = self.pending, set()
            for kind in KINDS:
                if kind in kinds:
                    try:
                        await self.reload(kind)
                        self.done[kind] += 1
                    except Exception:
                        # The periodic reloads still come; a broken reload must not stop
                        # the next ones.
                        log.exception("could not reload after %s", kind)

    async def reload(self, kind: str) -> None:
        hub = self.hub
        if kind == "sla.config_changed":
            await sla_settings.load_settings(hub.pool, hub.settings)
        elif kind == "rule.changed":
            if hub.ingest is not None and hub.ingest.pipeline is not None:
                await hub.ingest.reload(reconcile=True)
        elif kind == "town.changed":
            if hub.roles & {"web", "dispatch"}:  # the roles hub/app.py loads a graph for
                hub.road_graph = await decisions.load_road_graph(hub.pool)
                log.info("road graph reloaded after a town import")


def start(hub: Hub) -> ConfigReloader:
    """Listen on the hub's bus and run the reloads as one of its named tasks."""
    reloader = ConfigReloader(hub)
    hub.bus.listen(reloader.on_event)
    hub.tasks.append(asyncio.create_task(reloader.run(), name="hub.config_reload"))
    return reloader
