"""The phone's live inbox: a websocket with resume (``/ws/field``).

A websocket from the hub rather than MQTT over websockets from the broker: the phone
already holds an HTTPS token and talks to the hub for every action, so one connection and
one credential suffice (no broker account per phone, no broker port open to phones, no
second ACL to keep in step with the field roles); and resume comes from the hub's events
table, whose sequence numbers are commit order, so "everything for me after seq N" is
exact. (MQTT's persistent session would resume too, but only for the messages the broker
queued for that client id, and the command topic carries commands, not the case events a
phone needs to show a withdrawal.) See docs/ARCHITECTURE.md, "The field app".

Protocol: the phone connects with ``?token=...&after=N`` (N: the last seq it has seen,
from ``GET /api/field/inbox`` or an earlier message; optionally ``&ping=S``, a shorter
heartbeat, see ``heartbeat``). The hub subscribes to the bus, then
sends every event after N that concerns the phone (``relevant``), in seq order and without
duplicates, then each new one as it commits. Messages: ``{"type": "hello", "seq"}`` first,
then ``{"type": "event", "seq", "kind", "action", "incident", "released_unit"}``.
The hello carries ``ping_s``: when the hub has sent nothing for that long it sends
``{"type": "ping", "seq"}``, so a phone that hears nothing for a few of those knows its
socket is dead (a half-open connection after a change of network never closes by itself)
and reconnects, resuming from its last seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from core import outbox
from core.events import Envelope
from hub.state import Hub

log = logging.getLogger("hub.field_feed")
router = APIRouter()

# Replayed per page on resume; a phone offline for a day in a busy town sees a few
# thousand events, of which it keeps the few about itself.
REPLAY_PAGE = 2000
# The bus queue of one phone: a phone sees a few events a minute; a backlog this long
# means it stopped reading, and it is closed to reconnect and resume from the table.
QUEUE_SIZE = 5000
# A phone may ask for a more frequent heartbeat than HUB_FIELD_PING_S (``ping``, seconds:
# a unit in poor coverage that must notice a dead link sooner; the tests); not below this,
# so one phone's feed costs the hub at most a message a second when quiet.
PING_MIN_S = 1.0
CASE_KINDS = frozenset({"incident.opened", "incident.updated", "unit.assigned",
                        "sla.warned", "sla.breached"})


def relevant(kind: str, payload: Mapping[str, Any], unit_id: str,
             grids: Sequence[str]) -> bool:
    """Does this event concern the phone of ``unit_id`` (working in ``grids``, for a grid
    worker)? Its unit's cases (dispatched to it, or taken away from it), and for a grid
    worker the cases of its grids."""
    if kind not in CASE_KINDS:
        return False
    inc = payload.get("incident") or {}
    if payload.get("released_unit") == unit_id or inc.get("assigned_unit") == unit_id:
        return True
    if inc.get("handler") == unit_id or inc.get("reporter") == unit_id:
        return True
    return bool(grids) and inc.get("grid_id") in grids


def heartbeat(asked: str | None, default_s: float) -> float:
    """The heartbeat interval for a phone that asked for ``asked`` seconds (or nothing):
    between ``PING_MIN_S`` and the hub's ``default_s``."""
    try:
        want = float(asked) if asked else default_s
    except ValueError:
        want = default_s
    if want != want:  # NaN
        want = default_s
    return max(min(PING_MIN_S, default_s), min(want, default_s))


def message(env: Envelope) -> dict[str, Any]:
    p = env.payload
    return {"type": "event", "seq": env.seq, "kind": env.kind, "ts": env.ts,
            "action": p.get("action", ""), "incident": p.get("incident"),
            "released_unit": p.get("released_unit", "")}


@router.websocket("/ws/field")
async def field_feed(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    p = ws.scope["state"]["principal"]
    unit_id = str(p.unit_id)
    grids = list(await hub.pool.fetchval(
        "SELECT grids FROM field_phones WHERE name = $1", p.name) or [])
    try:
        after = max(0, int(ws.query_params.get("after") or 0))
    except ValueError:
        after = 0
    await ws.accept()
    # Subscribe first, then read the table: whatever commits meanwhile is in the queue,
    # and is dropped below if the table read already had it.
    sub = hub.bus.subscribe(QUEUE_SIZE)
    ping_s = heartbeat(ws.query_params.get("ping"), hub.settings.field_ping_s)
    clock = asyncio.get_running_loop().time
    last_sent = clock()

    async def send(msg: dict[str, Any]) -> None:
        nonlocal last_sent
        await ws.send_json(msg)
        last_sent = clock()

    try:
        await send({"type": "hello", "seq": hub.bus.last_seq, "ping_s": ping_s})
        sent = after
        while True:
            page = await outbox.events_after(hub.pool, sent, REPLAY_PAGE)
            for env in page:
                if relevant(env.kind, env.payload, unit_id, grids):
                    await send(message(env))
                sent = env.seq
            if len(page) < REPLAY_PAGE:
                break
        reader = asyncio.create_task(_until_closed(ws))
        try:
            while not reader.done():
                waiter = asyncio.create_task(sub.event_wake.wait())
                await asyncio.wait({waiter, reader}, timeout=max(0.0, last_sent + ping_s - clock()),
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if clock() - last_sent >= ping_s:
                    # Quiet for this phone (the town may be busy with others' cases): a
                    # heartbeat, with the seq it has now seen everything up to.
                    await send({"type": "ping", "seq": sent})
                if not sub.event_wake.is_set():
                    continue
                sub.event_wake.clear()
                if sub.overflowed:
                    await ws.close(code=1013, reason="feed.behind")  # resume from the table
                    return
                for env in sub.drain():
                    if env.seq <= sent:
                        continue
                    sent = env.seq
                    if relevant(env.kind, env.payload, unit_id, grids):
                        await send(message(env))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await reader
    except (WebSocketDisconnect, RuntimeError) as e:
        log.debug("field websocket closed: %s", e)
    finally:
        hub.bus.unsubscribe(sub)


async def _until_closed(ws: WebSocket) -> None:
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
