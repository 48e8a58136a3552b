"""Simulated field crews for ``./hubctl bench dispatch --hub`` (simulators/bench/dispatch_hub.py):
each unit learns of a dispatch or a withdrawal on its MQTT command topic, accepts, drives,
handles and reports through the hub's API, and sends its GPS fix every ``GPS_PERIOD_S``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from core.mqtt_client import BrokerAddress, make_client
from dispatch.geo import RoadGraph
from ingest import wire
from simulators.bench.dispatch_sim import TURNOUT_S
from simulators.bench.dispatch_town import Town

# The same logger as the benchmark's driver: its messages read as one run's.
log = logging.getLogger("simulators.bench.dispatch_hub")

# Every unit's fix is re-sent this often (real seconds): well inside the hub's 120 s
# staleness, and at speed 60 an en-route position lags the truth by under 30 simulated
# seconds (~300 m), which moves an ETA far less than the 360 s preemption penalty.
GPS_PERIOD_S = 0.5
# The run's incident titles start with this: crews and figures tell the run's cases by it.
TITLE_PREFIX = "bench "


@dataclass(slots=True)
class CrewUnit:
    """One simulated unit: where it is and what it does (real time)."""

    id: str
    lon: float  # available / on scene: where it is; en route: where the leg started
    lat: float
    status: str = "available"
    incident: int | None = None
    dest: tuple[float, float] | None = None
    depart_r: float = 0.0
    arrive_r: float = 0.0
    moving: bool = False  # withdrawn while en route: the next leg needs no turnout
    task: asyncio.Task[None] | None = None

    def position(self, now_r: float) -> tuple[float, float]:
        """As dispatch_bench._Unit.position: linear along the leg, by elapsed travel time."""
        if self.status != "en_route" or self.dest is None or self.arrive_r <= self.depart_r:
            return self.lon, self.lat
        f = min(1.0, max(0.0, (now_r - self.depart_r) / (self.arrive_r - self.depart_r)))
        return (self.lon + f * (self.dest[0] - self.lon), self.lat + f * (self.dest[1] - self.lat))


class CaseMoved(Exception):
    """The hub refused a crew's step (409/422): the case is no longer this unit's."""


class BenchCrews:
    """The replay's units, acting through the hub's API on the commands it sends them."""

    def __init__(self, town: Town, graph: RoadGraph, handling_s: Mapping[str, float],
                 client: httpx.AsyncClient, gps: mqtt.Client, speed: float) -> None:
        self.units = {u.id: CrewUnit(u.id, u.lon, u.lat) for u in town.units}
        self.graph = graph
        self.handling_s = handling_s  # stream id -> on-scene seconds (world time)
        self.client = client
        self.gps = gps
        self.speed = speed
        self.seen: set[str] = set()
        self.errors: list[str] = []
        self.conflicts: list[str] = []
        self.commands = {"dispatch": 0, "withdraw": 0}
        self.ours: set[Any] = set()  # incident ids of this run's dispatches
        self.foreign = 0  # commands for cases of another hub on the same broker

    # ---- commands (called on the event loop)
    def on_command(self, unit_id: str, payload: bytes) -> None:
        unit = self.units.get(unit_id)
        if unit is None:
            return
        try:
            cmd = json.loads(payload)
            cid, kind = str(cmd["id"]), str(cmd["type"])
        except (ValueError, KeyError, TypeError):
            self.errors.append(f"unreadable command for {unit_id}")
            return
        if cid in self.seen:  # QoS 1 may deliver twice
            return
        self.seen.add(cid)
        # The broker may carry another hub's commands for units of the same ids (a shared
        # test broker, a demo running beside): only this run's cases are ours.
        if kind == "dispatch" and not str(cmd.get("incident", {}).get("title") or ""
                                          ).startswith(TITLE_PREFIX):
            self.foreign += 1
            return
        if kind == "withdraw" and cmd.get("incident_id") not in self.ours:
            self.foreign += 1
            return
        now = time.time()
        if kind == "withdraw":
            self.commands["withdraw"] += 1
            if unit.incident == cmd.get("incident_id"):
                self._stop(unit, now)
        elif kind == "dispatch":
            self.commands["dispatch"] += 1
            inc = cmd["incident"]
            self.ours.add(inc["id"])
            title = str(inc.get("title") or "")
            if unit.incident is not None:
                self._stop(unit, now)  # the withdrawal may not have arrived yet
            unit.incident = int(inc["id"])
            unit.task = asyncio.create_task(self._leg(
                unit, int(inc["id"]), float(inc["lon"]), float(inc["lat"]),
                self.handling_s.get(title.removeprefix(TITLE_PREFIX), 0.0), now))

    def _stop(self, unit: CrewUnit, now: float) -> None:
        """Taken off its case: the unit stays where it is now, still moving if it was."""
        unit.lon, unit.lat = unit.position(now)
        unit.moving = unit.status == "en_route"
        unit.status, unit.incident, unit.dest = "available", None, None
        if unit.task is not None:
            unit.task.cancel()
            unit.task = None
        self.publish(unit, now)

    async def _leg(self, unit: CrewUnit, iid: int, lon: float, lat: float, handling_s: float,
                   received: float) -> None:
        try:
            diverted = unit.moving
            try:
                await self._act(iid, "accept")
            except CaseMoved:
                # A re-plan that withdrew and re-sent this very unit can race the accept of
                # the first command: the hub then took that accept for the new dispatch.
                if not await self._mine_accepted(iid, unit.id):
                    raise
            unit.depart_r = received + (0.0 if diverted else TURNOUT_S / self.speed)
            travel = self.graph.travel_time_s(unit.lon, unit.lat, lon, lat)
            unit.arrive_r = unit.depart_r + travel / self.speed
            unit.status, unit.dest = "en_route", (lon, lat)
            await asyncio.sleep(max(0.0, unit.arrive_r - time.time()))
            unit.status, unit.lon, unit.lat, unit.dest = "on_scene", lon, lat, None
            unit.moving = False
            self.publish(unit, time.time())
            await self._act(iid, "start_handling")
            await asyncio.sleep(handling_s / self.speed)
            await self._act(iid, "give_feedback", "已到场处置完毕")
            unit.status, unit.incident, unit.task = "available", None, None
        except asyncio.CancelledError:
            raise
        except CaseMoved as e:
            # The hub moved the case between its command and this step (a re-plan of a
            # dispatch not yet accepted, a preemption racing the arrival): its withdrawal
            # command resets the unit. Counted: the replay has no such race.
            self.conflicts.append(f"case {iid} unit {unit.id}: {e}")
        except Exception as e:  # a crew must never take the run down; counted, reported
            self.errors.append(f"case {iid} unit {unit.id}: {type(e).__name__}: {e}")
            log.warning("case %s unit %s: %s", iid, unit.id, e)

    async def _act(self, iid: int, action: str, reason: str | None = None) -> None:
        # Recorded under the bench's token: the hub takes the actor from authentication.
        body: dict[str, Any] = {"action": action}
        if reason is not None:
            body["reason"] = reason
        r = await self.client.post(f"/api/incidents/{iid}/actions", json=body)
        if r.status_code in (409, 422):
            raise CaseMoved(f"{action} refused: {r.text[:200]}")
        r.raise_for_status()

    async def _mine_accepted(self, iid: int, unit_id: str) -> bool:
        r = await self.client.get(f"/api/incidents/{iid}")
        inc = r.json().get("incident", {}) if r.status_code == 200 else {}
        return bool(inc.get("assigned_unit") == unit_id and inc.get("state") == "accepted")

    # ---- GPS
    def publish(self, unit: CrewUnit, now: float) -> None:
        lon, lat = unit.position(now)
        self.gps.publish(wire.gps_topic(unit.id), wire.encode_gps(now, lat, lon), qos=0)

    async def gps_loop(self) -> None:
        while True:
            now = time.time()
            for unit in self.units.values():
                self.publish(unit, now)
            await asyncio.sleep(GPS_PERIOD_S)


def _mqtt(url: str, client_id: str, crews_ref: list[BenchCrews],
          loop: asyncio.AbstractEventLoop, connected: asyncio.Event) -> mqtt.Client:
    """One client for both directions: the fleet account publishes fixes and reads every
    unit's commands (as the demo's crews do)."""
    client = make_client(client_id, BrokerAddress.parse(url), persistent=False, v311=True)

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe("gridhub/v1/units/+/commands", qos=1)
        loop.call_soon_threadsafe(connected.set)

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 5 and crews_ref:
            loop.call_soon_threadsafe(crews_ref[0].on_command, parts[3], bytes(msg.payload))

    client.on_connect = on_connect
    client.on_message = on_message
    client.loop_start()
    return client
