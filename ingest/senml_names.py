"""Which device and metric a SenML record is about: (resolved name, unit) -> (device, metric).

Pure: values in, values out. ``ingest/wire.py`` calls ``resolve`` for every SenML record
with the record's resolved name (``bn`` + ``n``), its unit, the topic's source id and a
``NameMap`` (the registry's device ids and per-device overrides, built by the ingest
registry from the ``devices.senml_map`` column; the admin API ``hub/senml_map_api.py``
edits it). docs/MQTT.md ("Device and metric from the name") is the reference.

The shapes, tried in this order:

1. **The device itself** (RFC 8428 allows a name that names only the device, its
   measurements told apart by unit, as in its own examples): the resolved name is a
   registered device id, or is empty (the topic's source), or ends in ``/`` or ``:`` (the
   part before is the device). The metric is the device's override for the unit, else
   ``UNIT_METRICS[unit]``.
2. **An LwM2M path** ``<prefix>/<object>/<instance>/<resource>`` (a gateway for LwM2M
   clients, e.g. ``urn:dev:ow:10e2073a01080063:/3303/0/5700`` or ``/3303/0/5700``): the
   device is the prefix without its trailing ``/`` or ``:`` (the source when empty); the
   metric is the device's override for ``"<object>/<instance>/<resource>"``, else, for the
   sensor value resource 5700, ``LWM2M_OBJECTS[object]`` (instance 0 as is, instance k
   with a ``_k`` suffix).
3. **Device and metric in the name**: split at the last ``/`` or ``:``.

Anything else is ``Unresolved``: the decoder dead-letters the message, and the detail says
how to map it (which override key to set on which device).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from core.topics import _check_id, _valid_ids

# Metric names from SenML units (RFC 8428 s12.1 and the secondary registry of RFC 8798),
# in the project's vocabulary (name_unit, as the town's devices have them: temperature_c,
# noise_db). Only units that say what was measured: "m", "%", "ug/m3" or "count" could be
# a level, a distance, PM2.5 or PM10; those need a per-device override.
UNIT_METRICS: Final[Mapping[str, str]] = {
    "Cel": "temperature_c",
    "K": "temperature_k",
    "%RH": "humidity_pct",
    "lx": "illuminance_lx",
    "Pa": "pressure_pa",
    "hPa": "pressure_hpa",
    "dB": "noise_db",
    "dBA": "noise_db",
    "V": "voltage_v",
    "A": "current_a",
    "W": "power_w",
    "Wh": "energy_wh",
    "kWh": "energy_kwh",
    "Hz": "frequency_hz",
    "ppm": "concentration_ppm",
    "m/s": "speed_ms",
    "km/h": "speed_kmh",
    "%EL": "battery_pct",
    "m3/s": "flow_m3_s",
    "l/s": "flow_l_s",
    "mm/h": "rainfall_mm_h",
}

# IPSO Smart Objects (OMA LwM2M registry) whose sensor value (resource 5700) is one
# measurement, named in the project's vocabulary with the object's usual unit. Generic
# objects (3300 generic sensor, 3202 analog input) say nothing about what they measure:
# they need an override.
LWM2M_OBJECTS: Final[Mapping[int, str]] = {
    3301: "illuminance_lx",
    3303: "temperature_c",
    3304: "humidity_pct",
    3315: "pressure_hpa",       # barometer
    3316: "voltage_v",
    3317: "current_a",
    3320: "percentage_pct",
    3323: "pressure_pa",
    3324: "noise_db",           # loudness
    3325: "concentration_ppm",
    3326: "acidity_ph",
    3328: "power_w",
    3330: "distance_m",
    3331: "energy_kwh",
}
# The IPSO "Sensor Value" resource: the one number an IPSO sensor object reports.
LWM2M_SENSOR_VALUE: Final = 5700
# Descriptive IPSO resources (string values) that LwM2M clients put beside the value in a
# read of a whole object instance: 5701 "Sensor Units", 5750 "Application Type". They say
# nothing to store; a pack carrying them is not rejected for its string values.
LWM2M_DESCRIPTIVE: Final = frozenset({5701, 5750})

# Largest LwM2M object, instance or resource id (16-bit in the LwM2M specification).
_LWM2M_MAX_ID: Final = 65535
# Overrides a device may hold: a device has a handful of measurements; this bounds the
# memory and the row a bad request could create.
MAX_OVERRIDES: Final = 64
# A SenML unit is a short symbol (the decoder's own bound).
MAX_UNIT_LEN: Final = 32


@dataclass(frozen=True, slots=True)
class NameMap:
    """What the registry tells the mapping: the registered device ids and each device's
    overrides (key: a unit such as ``"Cel"`` or an LwM2M path ``"3303/0/5700"``; value:
    the metric)."""

    devices: Container[str] = frozenset()
    overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


EMPTY: Final = NameMap()


class Unresolved(NamedTuple):
    """A record the mapping cannot place: ``code`` is a wire error code (``bad_id`` or
    ``unmapped_name``), ``detail`` says how to map it."""

    code: str
    detail: str


def _valid(text: str) -> bool:
    return text in _valid_ids or _check_id(text)


def lwm2m_path(name: str) -> tuple[str, int, int, int] | None:
    """``"urn:x:/3303/0/5700"`` -> ``("urn:x", 3303, 0, 5700)``: the prefix without its
    trailing ``/`` or ``:`` and the three ids; None when the name does not end in an
    object/instance/resource path."""
    parts = name.rsplit("/", 3)
    if len(parts) != 4:
        return None
    prefix, o, i, r = parts
    if not (o.isdigit() and i.isdigit() and r.isdigit() and o.isascii() and i.isascii()
            and r.isascii()):
        return None
    obj, inst, res = int(o), int(i), int(r)
    if max(obj, inst, res) > _LWM2M_MAX_ID:
        return None
    return prefix.rstrip("/:"), obj, inst, res


def is_descriptive(name: str) -> bool:
    """True for an LwM2M descriptive resource (units, application type): skipped, not
    stored, whatever its value."""
    path = lwm2m_path(name)
    return path is not None and path[3] in LWM2M_DESCRIPTIVE


def resolve(name: str, unit: str | None, source_id: str, names: NameMap = EMPTY
            ) -> tuple[str, str] | Unresolved:
    """The (device, metric) of one SenML record, or why not (see the module doc)."""
    if name in names.devices:
        return _by_unit(name, unit, names)
    if not name or name[-1] in "/:":
        device = name[:-1] if name else source_id
        if not _valid(device):
            return _bad_device(name, device)
        return _by_unit(device, unit, names)
    if name[-1].isdigit() and "/" in name:
        path = lwm2m_path(name)
        if path is not None:
            return _lwm2m(name, path, source_id, names)
    sep = max(name.rfind("/"), name.rfind(":"))
    if sep < 0:
        device, metric = source_id, name
    else:
        device, metric = name[:sep], name[sep + 1:]
        if not _valid(device):
            return _bad_device(name, device)
    if not _valid(metric):
        return Unresolved("bad_id", f"SenML name {_short(name)}: metric part {_short(metric)} "
                          "must match ^[A-Za-z0-9_.:-]{1,64}$")
    return device, metric


def _by_unit(device: str, unit: str | None, names: NameMap) -> tuple[str, str] | Unresolved:
    if unit is None:
        return Unresolved(
            "unmapped_name",
            f"SenML name {_short(device)} names a device but the record has no unit and no "
            f"metric; add the metric to the name ({_short(device + '/<metric>')}) or a unit")
    metric = names.overrides.get(device, {}).get(unit) or UNIT_METRICS.get(unit)
    if metric is None:
        return Unresolved(
            "unmapped_name",
            f"device {_short(device)}: no metric for unit {_short(unit)}; set one with "
            f"PUT /api/devices/{device}/senml-map {{\"map\": {{{_short(unit, quote=True)}: "
            "\"<metric>\"}}")
    return device, metric


def _lwm2m(name: str, path: tuple[str, int, int, int], source_id: str, names: NameMap
           ) -> tuple[str, str] | Unresolved:
    prefix, obj, inst, res = path
    device = prefix or source_id
    if not _valid(device):
        return _bad_device(name, device)
    key = f"{obj}/{inst}/{res}"
    metric = names.overrides.get(device, {}).get(key)
    if metric is None and res == LWM2M_SENSOR_VALUE:
        base = LWM2M_OBJECTS.get(obj)
        if base is not None:
            metric = base if inst == 0 else f"{base}_{inst}"
    if metric is None:
        return Unresolved(
            "unmapped_name",
            f"LwM2M path {_short(name)}: object {obj} resource {res} has no default metric; "
            f"set one with PUT /api/devices/{device}/senml-map "
            f"{{\"map\": {{\"{key}\": \"<metric>\"}}}}")
    return device, metric


def _bad_device(name: str, device: str) -> Unresolved:
    return Unresolved(
        "bad_id",
        f"SenML name {_short(name)}: device part {_short(device)} must match "
        "^[A-Za-z0-9_.:-]{1,64}$ (names are <device>/<metric>, <device> alone with a unit, "
        "or <device>/<object>/<instance>/<resource> for LwM2M)")


def check_override(key: str, metric: str) -> str | None:
    """Why an override entry is invalid (None when it is fine): the key is a unit (1 to
    32 printable characters) or an LwM2M path ``object/instance/resource``; the metric
    follows the id rule."""
    if "/" in key and key[-1].isdigit() and key[0].isdigit():
        path = lwm2m_path("/" + key)
        if path is None or path[0]:
            return f"key {_short(key)}: an LwM2M path is object/instance/resource (ids 0..65535)"
    elif not 1 <= len(key) <= MAX_UNIT_LEN or not key.isprintable():
        return f"key {_short(key)}: a unit is 1 to {MAX_UNIT_LEN} printable characters"
    if not _valid(metric):
        return f"metric {_short(metric)} must match ^[A-Za-z0-9_.:-]{{1,64}}$"
    return None


def _short(text: str, limit: int = 80, *, quote: bool = False) -> str:
    """repr() of untrusted text (JSON-style double quotes with ``quote``), bounded."""
    text = text if len(text) <= limit else text[:limit] + "..."
    if quote:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(text)
