"""The event catalogue: every fact the hub publishes, as frozen dataclasses.

Names are past tense. Each event carries the full new state of the entities it changed
(``alarm``, ``incident``, ``unit``, ``assignment`` views as JSON-ready dicts), so that a
client applying events to a snapshot ends with exactly the next snapshot (see
``apply_to_state``). Events are written to the ``events`` table in the transaction that
makes the fact true and published on the bus only after commit (``core.outbox``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

Entity = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """Base: ``kind`` names the event on the wire and in the events table."""

    kind: ClassVar[str] = "event"

    def payload(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class AlarmRaised(Event):
    kind: ClassVar[str] = "alarm.raised"
    alarm: Entity


@dataclass(frozen=True, slots=True)
class AlarmRepeated(Event):
    """An open alarm's condition was seen again: its count and last-seen moved."""

    kind: ClassVar[str] = "alarm.repeated"
    alarm: Entity


@dataclass(frozen=True, slots=True)
class AlarmAcknowledged(Event):
    kind: ClassVar[str] = "alarm.acknowledged"
    alarm: Entity


@dataclass(frozen=True, slots=True)
class AlarmCleared(Event):
    kind: ClassVar[str] = "alarm.cleared"
    alarm: Entity


@dataclass(frozen=True, slots=True)
class AlarmUpdated(Event):
    """An open alarm's flags changed (flapping on or off, a situation's member count)."""

    kind: ClassVar[str] = "alarm.updated"
    alarm: Entity


@dataclass(frozen=True, slots=True)
class AlarmAttached(Event):
    """An alarm was joined to an incident (the one it opened, or an open one nearby)."""

    kind: ClassVar[str] = "alarm.attached"
    alarm: Entity


@dataclass(frozen=True, slots=True)
class IncidentOpened(Event):
    kind: ClassVar[str] = "incident.opened"
    incident: Entity


@dataclass(frozen=True, slots=True)
class IncidentUpdated(Event):
    """A case moved a step (or its flags changed); ``action`` is the workflow action."""

    kind: ClassVar[str] = "incident.updated"
    incident: Entity
    action: str = ""
    # The unit taken off the case by a withdraw or decline (its phone is told). Not named
    # "unit": that key carries a unit entity in every event (apply_to_state).
    released_unit: str = ""


@dataclass(frozen=True, slots=True)
class UnitAssigned(Event):
    kind: ClassVar[str] = "unit.assigned"
    incident: Entity
    unit: Entity
    assignment: Entity


@dataclass(frozen=True, slots=True)
class UnitStatusChanged(Event):
    kind: ClassVar[str] = "unit.status_changed"
    unit: Entity


@dataclass(frozen=True, slots=True)
class SlaWarned(Event):
    """A stage's SLA clock passed its warning share (amber on the console)."""

    kind: ClassVar[str] = "sla.warned"
    incident: Entity
    stage: str = ""


@dataclass(frozen=True, slots=True)
class SlaBreached(Event):
    kind: ClassVar[str] = "sla.breached"
    incident: Entity
    stage: str = ""


@dataclass(frozen=True, slots=True)
class DeviceChanged(Event):
    """A device was registered, edited, moved or decommissioned (``device["active"]`` is
    false then) from the administration pages; open consoles redraw its marker."""

    kind: ClassVar[str] = "device.changed"
    device: Entity


@dataclass(frozen=True, slots=True)
class TownChanged(Event):
    """The town's grids and roads were replaced by an import (hub/admin_town.py); open
    consoles fetch ``/api/town`` again and redraw it. Counts by what happened."""

    kind: ClassVar[str] = "town.changed"
    grids: Entity
    roads: Entity


@dataclass(frozen=True, slots=True)
class RuleChanged(Event):
    """An alarm rule was created, edited, enabled or disabled (hub/rules_api.py): every
    process with an evaluator reloads its rules, open rule lists redraw. ``rule`` is the
    rule's new row; not an entity of the console's picture (``apply_to_state``)."""

    kind: ClassVar[str] = "rule.changed"
    rule: Entity


@dataclass(frozen=True, slots=True)
class SlaConfigChanged(Event):
    """The SLA configuration was edited (limits, warn share, a calendar day; hub/sla_api.py):
    every process reloads it. The running clocks of open cases were recomputed in the same
    transaction, each with its own ``incident.updated`` (action ``sla_retimed``).
    ``target``, ``before`` and ``after`` are the edit as ``sla_config_log`` records it."""

    kind: ClassVar[str] = "sla.config_changed"
    target: str
    before: Any = None
    after: Any = None
    retimed: int = 0  # open cases whose clocks were recomputed


@dataclass(frozen=True, slots=True)
class SupervisorAlerted(Event):
    """Something needs a supervisor: an escalated dispatch, a preemption, an override."""

    kind: ClassVar[str] = "supervisor.alerted"
    alert: Entity
    incident: Entity | None = None


CATALOGUE: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        AlarmRaised,
        AlarmRepeated,
        AlarmAcknowledged,
        AlarmCleared,
        AlarmAttached,
        AlarmUpdated,
        IncidentOpened,
        IncidentUpdated,
        UnitAssigned,
        UnitStatusChanged,
        SlaWarned,
        SlaBreached,
        SupervisorAlerted,
        DeviceChanged,
        TownChanged,
        RuleChanged,
        SlaConfigChanged,
    )
}

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A committed event with its global sequence number, serialised once for all clients."""

    seq: int
    ts: float
    kind: str
    payload: Mapping[str, Any]
    wire: bytes = field(default=b"", compare=False)
    # ``time.perf_counter()`` when this process received it (the event feed's notification
    # or read; 0.0: not stamped): the start of the dispatch leader's reaction's timeline.
    received: float = field(default=0.0, compare=False)

    @staticmethod
    def make(seq: int, ts: float, kind: str, payload: Mapping[str, Any],
             received: float = 0.0) -> Envelope:
        wire = _encoder.encode({"seq": seq, "ts": ts, "kind": kind, "data": payload})
        return Envelope(seq, ts, kind, payload, wire, received)


# ------------------------------------------------------------------ live state projection
# The open picture the console shows: alarms not cleared, incidents not archived or
# cancelled, every unit. Snapshot + apply(events after it) == a fresh snapshot.
CLOSED_INCIDENT_STATES = frozenset({"archived", "cancelled"})


def entity_is_open(collection: str, entity: Entity) -> bool:
    if collection == "alarms":
        return entity.get("state") != "cleared"
    if collection == "incidents":
        return entity.get("state") not in CLOSED_INCIDENT_STATES
    return True


ENTITY_COLLECTIONS = {"alarm": "alarms", "incident": "incidents", "unit": "units"}


def apply_to_state(state: dict[str, dict[str, dict[str, Any]]], payload: Entity) -> None:
    """Apply one event's entities to a ``{collection: {id: entity}}`` state, in place."""
    for key, collection in ENTITY_COLLECTIONS.items():
        entity = payload.get(key)
        if entity is None:
            continue
        bucket = state.setdefault(collection, {})
        ident = str(entity["id"])
        if entity_is_open(collection, entity):
            bucket[ident] = dict(entity)
        else:
            bucket.pop(ident, None)
