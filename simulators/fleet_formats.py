"""Which wire format each simulated device and phone speaks (pure).

A real town's fleet is mixed: most sensors speak the hub's own telemetry format, but some
sit behind LwM2M/SenML gateways (RFC 8428 packs on ``gridhub/v1/senml/{gateway}``, one
gateway per first-level grid, each record named ``<device>/<metric>``); most patrol phones
run the hub's app, but some run OwnTracks (``owntracks/{user}/{unit}``, km/h, ``tst`` in
seconds). docs/MQTT.md describes both. ``device_wire`` and ``unit_wire`` pick the format
from a checksum of the id, so a device speaks the same format in every run and whichever
publisher process (simulators/run.py ``--publishers``) carries it, and give the topic and
an encoder; the simulators' gateway account (a ``fleet`` account) may publish on
every ingest topic.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ingest import wire

# One device in 6 reports through a SenML gateway (about 50 of the demo town's 290), and
# one unit's phone in 4 runs OwnTracks (about 11 of 45): enough to see both on the console and in
# the dead-letter counts, while the hub's own format stays the common case.
SENML_EVERY = 6
OWNTRACKS_EVERY = 4
OWNTRACKS_USER = "gridhub"  # OwnTracks' {user} level: the hub identifies by {device}


@dataclass(frozen=True, slots=True)
class DeviceWire:
    kind: str  # native | senml
    topic: str
    encode: Callable[[float, Mapping[str, float]], bytes]


@dataclass(frozen=True, slots=True)
class UnitWire:
    kind: str  # native | owntracks
    topic: str
    # (ts, lat, lon, speed m/s, heading degrees, accuracy m) -> payload
    encode: Callable[[float, float, float, float | None, float | None, float | None], bytes]


def senml_pack(device_id: str, ts: float, values: Mapping[str, float]) -> bytes:
    """One SenML pack of a device's values: base name ``<device>/``, base time ``ts``."""
    records: list[dict[str, Any]] = []
    for k, (metric, v) in enumerate(values.items()):
        rec: dict[str, Any] = {"n": metric, "v": v}
        if k == 0:
            rec = {"bn": f"{device_id}/", "bt": ts, **rec}
        records.append(rec)
    return json.dumps(records, separators=(",", ":")).encode()


def owntracks_location(ts: float, lat: float, lon: float, speed: float | None,
                       heading: float | None, acc: float | None) -> bytes:
    """An OwnTracks ``location`` message (speed in km/h, whole seconds as the app sends)."""
    msg: dict[str, Any] = {"_type": "location", "lat": lat, "lon": lon, "tst": int(ts)}
    if speed is not None:
        msg["vel"] = round(speed * 3.6)
    if heading is not None:
        msg["cog"] = round(heading)
    if acc is not None:
        msg["acc"] = round(acc)
    return json.dumps(msg, separators=(",", ":")).encode()


def gateway_of(device: Mapping[str, Any]) -> str:
    """The SenML gateway a device sits behind: one per first-level grid."""
    grid = str(device.get("grid") or "town")
    return f"gw-{grid.split('-')[0]}"


def _picked(ident: str, every: int) -> bool:
    return zlib.crc32(ident.encode()) % every == 0


def device_wire(device: Mapping[str, Any]) -> DeviceWire:
    """The format the device speaks."""
    dev = str(device["id"])
    if _picked(dev, SENML_EVERY):
        return DeviceWire("senml", wire.senml_topic(gateway_of(device)),
                          lambda ts, values: senml_pack(dev, ts, values))
    return DeviceWire("native", wire.telemetry_topic(dev),
                      lambda ts, values: wire.encode_telemetry(round(ts, 3), values))


def unit_wire(unit_id: str) -> UnitWire:
    """The phone app the unit's crew runs."""
    if _picked(unit_id, OWNTRACKS_EVERY):
        return UnitWire("owntracks", f"owntracks/{OWNTRACKS_USER}/{unit_id}",
                        owntracks_location)
    return UnitWire("native", wire.gps_topic(unit_id),
                    lambda ts, lat, lon, speed, heading, acc: wire.encode_gps(
                        round(ts, 3), lat, lon, speed, heading, acc))
