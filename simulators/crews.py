"""Simulated field crews: they answer dispatches through the hub's REST API, so the demo's
case loop (dispatch -> accept -> handle -> feedback -> verify -> close -> evaluate ->
archive) closes without anyone touching it.

Every ``POLL_S`` seconds ``Crews`` reads ``GET /api/units`` and ``GET /api/incidents``.
An open case assigned to a simulated unit gets a case task that acts like the patrol app,
step by step (states and actions of dispatch/workflow.py), with human delays divided by
``speed``:

1. ``dispatched``: answer as simulators/crew_behaviour.py draws it: accept within a minute
   (actor: the unit id); now and then decline with a reason (the hub re-dispatches), or
   answer only after the hub's accept time-out, when the hub has already escalated the case
   to another unit and alerted the supervisor (the late accept is refused: a conflict);
2. ``accepted``: drive there along the roads (``Fleet.send_to``); ``start_handling``
   within 30 m;
3. ``handling``: handle for a time that depends on the case's category
   (crew_behaviour.HANDLING_S times ``handling_scale``), ``give_feedback``; the unit heads
   home;
4. ``feedback``: the grid worker of the case's grid (actor ``gridworker:<grid>``, never the
   handler) checks: ``verify_ok``, or now and then ``verify_fail`` with a reason: the
   case is back in ``handling`` and the unit drives back to rework it (step 3);
5. ``verified`` -> ``closed`` -> ``evaluated`` -> ``archived``: ``operator:demo`` closes,
   evaluates and archives it a little later.

A task starts at whatever state the hub shows, so a restarted simulator carries on. HTTP
409/422 mean someone else moved the case: the task logs, re-reads and stops; the next poll
starts a fresh task from the hub's view after a back-off. Nothing here raises out of the
poll loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from core.mqtt_client import BrokerAddress, make_client
from dispatch.service import ACCEPT_TIMEOUT_S
from simulators import crew_behaviour
from simulators.crew_behaviour import CrewBehaviour, Odds
from simulators.patrol import Fleet

log = logging.getLogger("simulators.crews")

POLL_S = 2.0
# Every unit's command topic (ingest/wire.py command_topic).
COMMANDS_FILTER = "gridhub/v1/units/+/commands"
# Within this distance of the case a crew starts handling (the brief of the patrol app).
ON_SCENE_M = 30.0
OPERATOR = "operator:demo"
# After a task ended on a conflict or an error, leave the case alone this long (s) so a
# state we do not understand is not hammered every poll.
BACKOFF_S = 10.0
# A drive that takes longer than this (s) is abandoned: handle where the unit stands.
MAX_DRIVE_S = 3600.0
# Incident states after which a crew has nothing more to do (dispatch/workflow.py).
FINAL_STATES = frozenset({"archived", "cancelled", "shelved"})
# Where a case task starts, by the incident's state; "reach" = drive to the scene if not
# there yet and carry on handling (a case back in handling after a failed verification).
PHASE_BY_STATE = {"dispatched": "accept", "accepted": "drive", "handling": "reach",
                  "feedback": "verify", "verified": "close", "closed": "evaluate",
                  "evaluated": "archive"}
FEEDBACK_NOTES = ("已到场处置完毕", "已责令整改并复查", "已排除隐患", "已劝离并恢复秩序")


@dataclass(frozen=True, slots=True)
class CrewTiming:
    """Human delays (seconds at speed 1) and odds; ``speed`` divides every delay except a
    late answer's, which is measured against the hub's accept time-out."""

    verify_s: tuple[float, float] = (15.0, 45.0)
    close_s: tuple[float, float] = (10.0, 30.0)
    evaluate_s: tuple[float, float] = (5.0, 20.0)
    archive_s: tuple[float, float] = (5.0, 20.0)
    decline_p: float = crew_behaviour.DECLINE_P
    verify_fail_p: float = crew_behaviour.VERIFY_FAIL_P
    late_p: float = crew_behaviour.LATE_P
    # The live demo handles a case in a quarter of its history's time (a stall moved in a
    # minute or two, an illegal building stopped in 8-20 min), so units come back to the
    # pool while a newcomer watches; the category's order of length is kept.
    handling_scale: float = 0.25
    # The hub's accept time-out is this many times dispatch/service.py ACCEPT_TIMEOUT_S
    # (its HUB_SLA_TIME_SCALE): a late answer comes after it.
    hub_time_scale: float = 1.0
    speed: float = 1.0


# The hub's API wants a token (docs/SECURITY.md). The simulators act for every unit and
# for the operators who verify and close cases, so the demo gives them a supervisor token
# (var/demo/secrets/sim-token); a unit token would confine them to one unit's cases.
TOKEN_ENV = "HUB_API_TOKEN"
# The hub records every step under the caller's token, and a case may not be verified by
# the principal that handled it: the crews' own steps (accept, handle, feedback) go under a
# second token (the demo's "demo-crews", an operator's), verification and closing under
# the first. Without it every step is the same principal and the hub refuses verification.
FIELD_TOKEN_ENV = "HUB_FIELD_TOKEN"
FIELD_ACTIONS = frozenset({"accept", "decline", "start_handling", "give_feedback"})


def api_headers(token: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` for the hub's API: ``token``, else $HUB_API_TOKEN; none if
    neither is set (the hub then answers 401, which the callers log)."""
    token = token or os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


class CaseMoved(Exception):
    """The hub refused a step (409/422): someone else moved the case."""


class Crews:
    """Polls the hub and runs one task per case held by a simulated unit."""

    def __init__(self, base_url: str, fleet: Fleet, *, seed: int = 0,
                 timing: CrewTiming = CrewTiming(),
                 clock: Callable[[], float] = time.time,
                 poll_s: float = POLL_S, backoff_s: float = BACKOFF_S,
                 transport: httpx.AsyncBaseTransport | None = None,
                 token: str | None = None, field_token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = api_headers(token)
        field = field_token or os.environ.get(FIELD_TOKEN_ENV)
        self.field_headers = api_headers(field) if field else self.headers
        self.poll_s = poll_s
        self.backoff_s = backoff_s
        self.transport = transport  # tests pass an httpx.MockTransport
        self.fleet = fleet
        self.timing = timing
        self.rng = random.Random(f"crews:{seed}")
        self.behaviour = CrewBehaviour(f"crews:{seed}")
        self.clock = clock
        self.actions: Counter[str] = Counter()
        self.conflicts = 0
        self.errors = 0
        self.units: dict[str, dict[str, Any]] = {}
        self.incidents: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.backoff: dict[int, float] = {}
        # Which case moves each unit: a unit freed by feedback may be given a new case while
        # the old one awaits verification; a rework of the old one waits its turn.
        self.owner: dict[str, int] = {}
        self._hub_down_logged = False
        self.client: httpx.AsyncClient | None = None
        # Commands the units' phones received (docs/MQTT.md section 5), by type; a dispatch
        # wakes the poll at once instead of at the next tick.
        self.commands: Counter[str] = Counter()
        self._seen_commands: set[str] = set()
        self._wake = asyncio.Event()

    def on_command(self, unit_id: str, payload: bytes) -> None:
        """A command on a unit's topic (call on the event loop). Ids already seen are
        dropped: QoS 1 may deliver twice and the hub resends after a leader change."""
        if unit_id not in self.fleet.units:
            return
        try:
            cmd = json.loads(payload)
            cid, kind = str(cmd["id"]), str(cmd["type"])
        except (ValueError, KeyError, TypeError):
            log.warning("unit %s: unreadable command %r", unit_id, payload[:200])
            return
        if cid in self._seen_commands:
            return
        self._seen_commands.add(cid)
        self.commands[kind] += 1
        if kind == "withdraw":
            iid = cmd.get("incident_id")
            task = self.tasks.get(iid) if isinstance(iid, int) else None
            if task is not None and self.owner.get(unit_id) == iid:
                log.info("case %s: unit %s withdrawn by the hub", iid, unit_id)
                task.cancel()
        self._wake.set()

    # ---- the poll loop
    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5.0,
                                     transport=self.transport, headers=self.headers) as client:
            self.client = client
            try:
                while True:
                    await self.poll_once()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
                    self._wake.clear()
            finally:
                for task in self.tasks.values():
                    task.cancel()
                for task in list(self.tasks.values()):
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def poll_once(self) -> None:
        try:
            units, incidents = await self._read()
        except (httpx.HTTPError, ValueError) as e:
            if not self._hub_down_logged:
                log.warning("hub not reachable at %s (%s); crews wait", self.base_url, e)
                self._hub_down_logged = True
            return
        if self._hub_down_logged:
            log.info("hub reachable again at %s", self.base_url)
            self._hub_down_logged = False
        self.units = {u["id"]: u for u in units}
        self.incidents = {int(i["id"]): i for i in incidents}
        now = self.clock()
        for iid in [i for i, t in self.tasks.items() if t.done()]:
            del self.tasks[iid]
        for iid, inc in self.incidents.items():
            uid = inc.get("assigned_unit")
            phase = PHASE_BY_STATE.get(inc.get("state") or "")
            if phase is None or uid not in self.fleet.units:
                continue
            unit = self.units.get(uid, {})
            # A fresh dispatch shows on the unit too; wait until both views agree.
            if phase == "accept" and unit and unit.get("current_incident") not in (None, iid):
                continue
            self._maybe_start(iid, uid, phase, now)

    async def _read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        assert self.client is not None
        ru, ri = await asyncio.gather(self.client.get("/api/units"),
                                      self.client.get("/api/incidents",
                                                      params={"limit": 1000}))
        ru.raise_for_status()
        ri.raise_for_status()
        return ru.json(), ri.json()

    def _maybe_start(self, iid: int, uid: str, phase: str, now: float) -> None:
        if iid in self.tasks or self.backoff.get(iid, 0.0) > now:
            return
        log.info("case %s: unit %s picks it up at %s", iid, uid, phase)
        self.tasks[iid] = asyncio.create_task(self._case(iid, uid, phase),
                                              name=f"crew-case-{iid}")

    # ---- one case
    async def _case(self, iid: int, uid: str, phase: str) -> None:
        try:
            await self._steps(iid, uid, phase)
            # The next poll may have been read before our last step committed.
            self.backoff[iid] = self.clock() + 2 * self.poll_s
        except CaseMoved as e:
            self.conflicts += 1
            log.info("case %s: %s; re-reading", iid, e)
            self.backoff[iid] = self.clock() + self.backoff_s
            await self._reread(iid)
        except (httpx.HTTPError, ValueError, KeyError) as e:
            self.errors += 1
            log.warning("case %s: %s: %s", iid, type(e).__name__, e)
            self.backoff[iid] = self.clock() + self.backoff_s
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one case take the simulator down
            self.errors += 1
            log.exception("case %s: unexpected error", iid)
            self.backoff[iid] = self.clock() + self.backoff_s
        finally:
            self._unclaim(uid, iid)  # whatever happened, this case no longer moves the unit

    async def _steps(self, iid: int, uid: str, phase: str) -> None:
        rng = self.rng
        inc = self.incidents.get(iid) or await self._reread(iid)
        if inc is None:
            return
        lon, lat = float(inc["lon"]), float(inc["lat"])
        verifier = f"gridworker:{inc.get('grid_id') or self._home_grid(uid)}"
        if verifier == uid:
            verifier = "gridworker:town"
        behaviour = self._behaviour()
        if phase == "accept":
            timeout = ACCEPT_TIMEOUT_S.get(int(inc.get("priority") or 3), 900.0)
            ans = behaviour.answer(timeout * self.timing.hub_time_scale)
            if ans.late:
                log.info("case %s: %s answers late (%.0f s, time-out %.0f s)", iid, uid,
                         ans.delay_s, timeout * self.timing.hub_time_scale)
                await asyncio.sleep(ans.delay_s)
            else:
                await self._sleep(ans.delay_s)
            self._still_mine(iid, uid)
            if ans.decline_reason is not None:
                await self._act(iid, "decline", uid, ans.decline_reason)
                return
            await self._act(iid, "accept", uid)
            phase = "drive"
        while phase in ("drive", "reach", "verify"):
            if phase in ("drive", "reach"):
                await self._drive(iid, uid, lon, lat)
                if phase == "drive":
                    await self._act(iid, "start_handling", uid)
                self.fleet.hold(uid)
                await self._sleep(behaviour.handling_s(str(inc.get("category") or ""))
                                  * self.timing.handling_scale)
                self._still_mine(iid, uid)
                await self._act(iid, "give_feedback", uid, rng.choice(FEEDBACK_NOTES))
                self._unclaim(uid, iid)  # heads home; free for the next case
                phase = "verify"
            if phase == "verify":
                await self._wait(self.timing.verify_s)
                why = self._behaviour().verification()
                if why is not None:
                    await self._act(iid, "verify_fail", verifier, why)
                    log.info("case %s: verification failed, %s goes back", iid, uid)
                    phase = "reach"  # verify_fail puts the case back in handling
                else:
                    await self._act(iid, "verify_ok", verifier)
                    phase = "close"
        if phase == "close":
            await self._wait(self.timing.close_s)
            await self._act(iid, "close", OPERATOR)
            phase = "evaluate"
        if phase == "evaluate":
            await self._wait(self.timing.evaluate_s)
            await self._act(iid, "evaluate", OPERATOR, "处置及时，群众满意")
            phase = "archive"
        if phase == "archive":
            await self._wait(self.timing.archive_s)
            await self._act(iid, "archive", OPERATOR)

    async def _drive(self, iid: int, uid: str, lon: float, lat: float) -> None:
        while self.owner.get(uid, iid) != iid:  # busy with a newer case: rework after it
            await asyncio.sleep(min(1.0, self.poll_s))
            self._still_mine(iid, uid)
        self.owner[uid] = iid
        metres = self.fleet.send_to(uid, lon, lat)
        log.info("case %s: %s drives %.0f m to the scene", iid, uid, metres)
        started = self.clock()
        while self.fleet.distance_m(uid, lon, lat) > ON_SCENE_M:
            if self.clock() - started > MAX_DRIVE_S:
                log.warning("case %s: %s did not reach the scene; handles where it is",
                            iid, uid)
                break
            await asyncio.sleep(min(1.0, self.poll_s))
            self._still_mine(iid, uid)

    def _still_mine(self, iid: int, uid: str) -> None:
        """Raise CaseMoved if the last poll shows the case gone or given to another unit."""
        inc = self.incidents.get(iid)
        if inc is None or inc.get("state") in FINAL_STATES:
            raise CaseMoved("case no longer open")
        if inc.get("assigned_unit") not in (None, uid):
            raise CaseMoved(f"case reassigned to {inc.get('assigned_unit')}")

    def _unclaim(self, uid: str, iid: int) -> None:
        """The case no longer needs the unit: back to patrol (via home) unless another case
        has it."""
        if self.owner.get(uid) == iid:
            del self.owner[uid]
            if uid in self.fleet.units:
                self.fleet.release(uid, self.clock())

    def _home_grid(self, uid: str) -> str:
        u = self.fleet.units.get(uid)
        return u.home_grid if u is not None and u.home_grid else "town"

    async def _wait(self, span: tuple[float, float]) -> None:
        await self._sleep(self.rng.uniform(*span))

    async def _sleep(self, seconds: float) -> None:
        """A human delay of ``seconds`` at speed 1."""
        await asyncio.sleep(seconds / max(self.timing.speed, 1e-6))

    def _behaviour(self) -> CrewBehaviour:
        """The seeded behaviour with the odds of the timing now in force."""
        t = self.timing
        self.behaviour.odds = Odds(late_p=t.late_p, decline_p=t.decline_p,
                                   verify_fail_p=t.verify_fail_p)
        return self.behaviour

    async def _act(self, iid: int, action: str, actor: str, reason: str | None = None) -> None:
        assert self.client is not None
        # ``actor`` is who the simulation means (for the log); the hub records the token's
        # principal, never a name sent in the body.
        body: dict[str, Any] = {"action": action}
        if reason is not None:
            body["reason"] = reason
        r = await self.client.post(
            f"/api/incidents/{iid}/actions", json=body,
            headers=self.field_headers if action in FIELD_ACTIONS else self.headers)
        if r.status_code in (409, 422):
            raise CaseMoved(f"{action} by {actor} refused ({r.status_code}: {_error(r)})")
        r.raise_for_status()
        self.actions[action] += 1
        view = r.json()
        if isinstance(view, dict) and "id" in view:
            self.incidents[iid] = view
        log.info("case %s: %s by %s -> %s", iid, action, actor,
                 view.get("state") if isinstance(view, dict) else "?")

    async def _reread(self, iid: int) -> dict[str, Any] | None:
        assert self.client is not None
        try:
            r = await self.client.get(f"/api/incidents/{iid}")
        except httpx.HTTPError:
            return None
        if r.status_code == 404:
            self.incidents.pop(iid, None)
            return None
        if r.status_code != 200:  # a hub error: keep the view from the last poll
            log.warning("case %s: GET /api/incidents/%s answered %s", iid, iid, r.status_code)
            return self.incidents.get(iid)
        data = r.json()
        inc = data.get("incident", data) if isinstance(data, dict) else None
        if isinstance(inc, dict) and "state" in inc:
            self.incidents[iid] = inc
            return inc
        return None


def _error(r: httpx.Response) -> str:
    try:
        err = r.json().get("error", {})
        return f"{err.get('code')}: {err.get('message')}"
    except ValueError:
        return r.text[:200]


def listen_for_commands(url: str, crews: Crews, loop: asyncio.AbstractEventLoop,
                        client_id: str) -> mqtt.Client:
    """Subscribe to every unit's command topic (as a 'fleet' account may) and hand each
    command to ``crews`` on ``loop``; the caller stops the returned client."""
    client = make_client(client_id, BrokerAddress.parse(url), persistent=False, v311=True)

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe(COMMANDS_FILTER, qos=1)

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 5:
            loop.call_soon_threadsafe(crews.on_command, parts[3], bytes(msg.payload))

    client.on_connect = on_connect
    client.on_message = on_message
    client.loop_start()
    return client
