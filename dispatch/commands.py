"""Commands to patrol phones, derived from committed events: pure code.

A squad's phone learns of its work on its own MQTT topic
(``gridhub/v1/units/{unit_id}/commands``, docs/MQTT.md section 5): ``dispatch`` when the
hub assigns it a case, ``withdraw`` when the case is taken off it (preemption, an
operator's override, an escalation). Each command's ``id`` is the event's sequence
number, so a phone that receives a QoS 1 redelivery, or a resend after a leader change,
acts on it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.events import Envelope

COMMAND_KINDS = frozenset({"unit.assigned", "incident.updated"})
# The case fields a phone needs to go and work it.
INCIDENT_FIELDS = ("id", "category", "priority", "qualification", "title", "description",
                   "lon", "lat", "grid_id", "state")


@dataclass(frozen=True, slots=True)
class Command:
    unit_id: str
    payload: dict[str, Any]


def command_for(env: Envelope) -> Command | None:
    """The command an event sends to a unit's phone, if it sends one."""
    p = env.payload
    if env.kind == "unit.assigned":
        inc = p["incident"]
        assignment = p.get("assignment") or {}
        return Command(str(p["unit"]["id"]), {
            "id": str(env.seq), "type": "dispatch", "ts": env.ts,
            "incident": {k: inc.get(k) for k in INCIDENT_FIELDS},
            "assignment_id": assignment.get("id"),
            "eta_s": assignment.get("eta_s"),
            "reason": assignment.get("reason"),
        })
    if env.kind == "incident.updated" and p.get("action") in ("withdraw", "decline"):
        unit = p.get("released_unit")
        if unit:
            inc = p["incident"]
            return Command(str(unit), {
                "id": str(env.seq), "type": "withdraw", "ts": env.ts,
                "incident_id": inc.get("id"), "action": p["action"],
            })
    return None
