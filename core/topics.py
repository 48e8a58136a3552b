"""The MQTT topics of protocol v1 and the id rule they share: the contract between devices,
phones, the ingest role (ingest/wire.py decodes what arrives on them) and the dispatcher
(dispatch/command_sender.py publishes unit commands). Pure; below both ingest and dispatch.
"""

from __future__ import annotations

import re
from typing import Final

_V1: Final = "gridhub/v1"

SUBSCRIPTIONS: Final = (
    f"{_V1}/devices/+/telemetry",
    f"{_V1}/gateways/+/telemetry",
    f"{_V1}/units/+/gps",
    f"{_V1}/senml/+",
    "owntracks/+/+",
)
"""MQTT topic filters the ingest role subscribes to (wrap in ``$share/<group>/`` to scale out)."""

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Memo of ids already seen to be valid: a set lookup is ~5x cheaper than the regex
# and the same few thousand device ids and metrics repeat all day. Cleared when
# full so that a stream of random ids cannot grow it without bound.
_ID_CACHE_MAX: Final = 100_000
_valid_ids: set[str] = set()


def _check_id(value: str) -> bool:
    """True if ``value`` is a valid id (the slow path behind the ``_valid_ids`` memo)."""
    if _ID_RE.fullmatch(value) is None:
        return False
    if len(_valid_ids) >= _ID_CACHE_MAX:
        _valid_ids.clear()
    _valid_ids.add(value)
    return True


def _topic_id(value: str) -> str:
    if value not in _valid_ids and not _check_id(value):
        raise ValueError(f"invalid id {value!r}: must match ^[A-Za-z0-9_.:-]{{1,64}}$")
    return value


def telemetry_topic(device_id: str) -> str:
    """Topic a device publishes its own telemetry to. Raises ValueError on a bad id."""
    return f"{_V1}/devices/{_topic_id(device_id)}/telemetry"


def gateway_telemetry_topic(gateway_id: str) -> str:
    """Topic a gateway publishes batches for many devices to."""
    return f"{_V1}/gateways/{_topic_id(gateway_id)}/telemetry"


def gps_topic(unit_id: str) -> str:
    """Topic a patrol unit's phone publishes GPS fixes to."""
    return f"{_V1}/units/{_topic_id(unit_id)}/gps"


def senml_topic(source_id: str) -> str:
    """Topic a device or gateway publishes SenML packs to."""
    return f"{_V1}/senml/{_topic_id(source_id)}"


def command_topic(unit_id: str) -> str:
    """Topic the hub publishes dispatch commands to (hub -> unit; never decoded here)."""
    return f"{_V1}/units/{_topic_id(unit_id)}/commands"
