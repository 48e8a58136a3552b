"""MQTT wire formats, version 1: topic + payload bytes -> readings and positions.

Pure and sans-I/O: ``decode`` takes the topic, the raw payload and the time the
message was received (passed in, never read from a clock) and returns either a
``Decoded`` value or a ``DecodeError`` value. It never raises for bad input, so
the MQTT adapter can dead-letter on ``isinstance(result, DecodeError)`` without
a try block. docs/MQTT.md is the reference for every topic and payload.

Rules shared by all formats (details in docs/MQTT.md):
- One bad record rejects the whole message: a message is stored completely or
  dead-lettered completely, never half.
- Times are UNIX seconds (float); native formats also accept ``ts_ms``.
- Ids (device, unit, metric, gateway) match ``^[A-Za-z0-9_.:-]{1,64}$``.
- Checks run in this order: size, topic, ids from the topic, JSON and schema,
  then each record in payload order; the first failure is the one reported.

This runs for every MQTT message (20,000+ per second), so it uses pre-built
msgspec decoders, splits topics with ``str.split`` and keeps error
classification out of the hot path.
"""

import json
from collections.abc import Mapping
from typing import Final

import msgspec

from core.topics import (  # noqa: F401  (topics re-exported: wire.*_topic)
    _ID_RE,
    SUBSCRIPTIONS,
    _check_id,
    _valid_ids,
    command_topic,
    gateway_telemetry_topic,
    gps_topic,
    senml_topic,
    telemetry_topic,
)
from ingest import senml_names
from ingest.senml_names import NameMap

__all__ = [
    "DEFAULT_LIMITS",
    "ERROR_CODES",
    "SUBSCRIPTIONS",
    "DecodeError",
    "Decoded",
    "Limits",
    "NameMap",
    "Position",
    "Reading",
    "command_topic",
    "decode",
    "encode_gps",
    "encode_telemetry",
    "gateway_telemetry_topic",
    "gps_topic",
    "senml_topic",
    "telemetry_topic",
]

# --------------------------------------------------------------------------- results


class Reading(msgspec.Struct, frozen=True, gc=False):
    """One measured value. ``ts`` is device time in UNIX seconds."""

    device_id: str
    metric: str
    ts: float
    value: float
    unit: str | None


class Position(msgspec.Struct, frozen=True, gc=False):
    """One fix of a patrol unit. WGS-84 degrees; speed m/s; heading degrees; accuracy m."""

    unit_id: str
    ts: float
    lat: float
    lon: float
    speed: float | None
    heading: float | None
    accuracy: float | None


class Decoded(msgspec.Struct, frozen=True):
    """A message that decoded cleanly. Both lists may be empty (heartbeats, OwnTracks lwt)."""

    readings: list[Reading]
    positions: list[Position]


class DecodeError(msgspec.Struct, frozen=True, gc=False):
    """Why a message was rejected. ``code`` is one of ``ERROR_CODES`` (stable);
    ``detail`` is for people and may change."""

    code: str
    detail: str


ERROR_CODES: Final = (
    "unknown_topic",  # topic is not one of the v1 topics
    "too_large",  # payload over Limits.max_payload_bytes (checked before parsing)
    "bad_json",  # not JSON, not UTF-8, empty
    "bad_schema",  # wrong types, missing or unknown fields, wrong nesting
    "non_finite",  # NaN / Infinity tokens, numbers beyond Limits.max_abs_value
    "bad_time",  # outside [received_at - max_past_s, received_at + max_future_s]
    "bad_position",  # lat/lon out of range or (0, 0); negative speed/accuracy; heading > 360
    "bad_id",  # device/unit/metric/gateway id not matching ^[A-Za-z0-9_.:-]{1,64}$
    "too_many",  # more than Limits.max_records records in one message
    "unsupported_value",  # valid input we deliberately do not store (SenML vs/vb/vd/s, ...)
    "unmapped_name",  # a SenML name naming a device, no metric for its unit or LwM2M path
)


class Limits(msgspec.Struct, frozen=True, gc=False):
    """Bounds applied to every message; the defaults are the production values."""

    # A gateway batch of 1,000 readings is ~40 KiB of JSON; anything bigger is a bug
    # or abuse, and refusing it before parsing bounds the work one message can cause.
    max_payload_bytes: int = 64 * 1024
    # Bounds the rows one message can add to a COPY batch (and to one dead letter).
    max_records: int = 1000
    # No sensor we ingest reports values near 1e15; beyond it the float is a bug
    # (uninitialised memory, unit confusion) and would poison aggregates.
    max_abs_value: float = 1e15
    # Device clocks drift and NTP may lag: 5 minutes of lead is tolerated, more
    # means a wrong clock, and such rows would sit "in the future" on every chart.
    max_future_s: float = 300.0
    # Gateways buffer during outages; a week covers a long holiday outage. Older
    # data lands in compressed chunks and is more likely a reset clock (1970).
    max_past_s: float = 7 * 86400.0


DEFAULT_LIMITS: Final = Limits()

# Topics live in core/topics.py (shared with the dispatcher); re-exported here.

# --------------------------------------------------------------------------- encoders

_encoder: Final = msgspec.json.Encoder()


def encode_telemetry(ts: float, values: Mapping[str, float]) -> bytes:
    """Native telemetry payload (for simulators and benchmarks)."""
    return _encoder.encode({"ts": ts, "values": values})


def encode_gps(
    ts: float,
    lat: float,
    lon: float,
    speed: float | None = None,
    heading: float | None = None,
    acc: float | None = None,
) -> bytes:
    """Native GPS payload; ``None`` fields are left out."""
    msg: dict[str, float] = {"ts": ts, "lat": lat, "lon": lon}
    if speed is not None:
        msg["speed"] = speed
    if heading is not None:
        msg["heading"] = heading
    if acc is not None:
        msg["acc"] = acc
    return _encoder.encode(msg)


# --------------------------------------------------------------------------- wire schemas
# Native formats are ours: unknown fields are an error (a typo such as "speed_kmh"
# would otherwise be dropped silently). SenML and OwnTracks are third-party and
# extensible: unknown fields are ignored, as their specifications require.


class _Telemetry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    values: dict[str, float]
    ts: float | None = None
    ts_ms: int | None = None
    device: str | None = None


class _Gps(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    lat: float
    lon: float
    ts: float | None = None
    ts_ms: int | None = None
    speed: float | None = None
    heading: float | None = None
    acc: float | None = None


class _SenML(msgspec.Struct, gc=False):
    bn: str | None = None
    bt: float | None = None
    bu: str | None = None
    bv: float | None = None
    bver: int | None = None
    n: str | None = None
    u: str | None = None
    v: float | None = None
    vs: str | None = None
    vb: bool | None = None
    vd: str | None = None
    s: float | None = None
    t: float | None = None


class _OwnTracks(msgspec.Struct, gc=False):
    type: str = msgspec.field(name="_type")
    lat: float | None = None
    lon: float | None = None
    tst: float | None = None
    acc: float | None = None
    vel: float | None = None
    cog: float | None = None


_telemetry_decoder: Final[msgspec.json.Decoder[_Telemetry | list[_Telemetry]]] = (
    msgspec.json.Decoder(_Telemetry | list[_Telemetry])
)
_gps_decoder: Final[msgspec.json.Decoder[_Gps | list[_Gps]]] = msgspec.json.Decoder(
    _Gps | list[_Gps]
)
_senml_decoder: Final = msgspec.json.Decoder(list[_SenML])
_owntracks_decoder: Final = msgspec.json.Decoder(_OwnTracks)

# Largest ts_ms converted to seconds; beyond 2**53 the int is not a meaningful time
# and int / 1000 could overflow a float.
_MAX_TS_MS: Final = 2**53
# RFC 8428 section 4.5.3: resolved SenML times below 2**28 are relative to "now".
_SENML_RELATIVE: Final = 2.0**28
# RFC 8428 version this decoder understands; a pack with a larger bver MUST NOT be used.
_SENML_VERSION: Final = 10
# SenML units are short symbols ("Cel", "ug/m3"); a longer one is garbage.
_MAX_UNIT_LEN: Final = 32

# --------------------------------------------------------------------------- decode


def decode(
    topic: str,
    payload: bytes,
    received_at: float,
    limits: Limits = DEFAULT_LIMITS,
    names: NameMap = senml_names.EMPTY,
) -> Decoded | DecodeError:
    """Decode one MQTT message.

    ``received_at`` (UNIX seconds) is "now" for the time window and for SenML
    relative times. ``names`` (the registry's device ids and per-device overrides)
    places SenML records whose name is a device alone or an LwM2M path
    (ingest/senml_names.py). Returns ``Decoded`` or ``DecodeError``; never raises
    for any topic or payload.
    """
    if len(payload) > limits.max_payload_bytes:
        return DecodeError(
            "too_large", f"payload is {len(payload)} bytes, limit {limits.max_payload_bytes}"
        )
    parts = topic.split("/")
    n = len(parts)
    head = parts[0]
    if head == "gridhub":
        if n == 5 and parts[1] == "v1":
            kind = parts[2]
            leaf = parts[4]
            if kind == "devices" and leaf == "telemetry":
                return _telemetry(parts[3], False, payload, received_at, limits)
            if kind == "units" and leaf == "gps":
                return _gps(parts[3], payload, received_at, limits)
            if kind == "gateways" and leaf == "telemetry":
                return _telemetry(parts[3], True, payload, received_at, limits)
        elif n == 4 and parts[1] == "v1" and parts[2] == "senml":
            return _senml(parts[3], payload, received_at, limits, names)
    elif head == "owntracks" and n == 3:
        return _owntracks(parts[2], payload, received_at, limits)
    return DecodeError("unknown_topic", f"no v1 format for topic {_short(topic)}")


def _telemetry(
    topic_id: str, gateway: bool, payload: bytes, received_at: float, limits: Limits
) -> Decoded | DecodeError:
    if topic_id not in _valid_ids and not _check_id(topic_id):
        return _bad_id("gateway" if gateway else "device", topic_id)
    try:
        msg = _telemetry_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return _schema_error(exc)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _json_error(payload, exc)
    except RecursionError:
        return _too_deep()
    items = msg if isinstance(msg, list) else (msg,)
    max_records = limits.max_records
    if len(items) > max_records:
        return _too_many(len(items), max_records)
    lo = received_at - limits.max_past_s
    hi = received_at + limits.max_future_s
    max_abs = limits.max_abs_value
    readings: list[Reading] = []
    append = readings.append
    for item in items:
        device = item.device
        if device is None:
            if gateway:
                return DecodeError(
                    "bad_schema", 'every element on a gateway topic must carry "device"'
                )
            device = topic_id
        elif device != topic_id:
            if not gateway:
                return DecodeError(
                    "bad_id",
                    f"device {_short(device)} differs from the topic's device "
                    f"{_short(topic_id)}; publish other devices' data on a gateway topic",
                )
            if device not in _valid_ids and not _check_id(device):
                return _bad_id("device", device)
        ts = item.ts
        if ts is None:
            ts = _ms_to_s(item.ts_ms)
            if ts is None:
                return _ms_error(item.ts_ms)
        elif item.ts_ms is not None:
            return DecodeError("bad_schema", 'give either "ts" or "ts_ms", not both')
        if not lo <= ts <= hi:
            return _time_error(ts, received_at, limits)
        for metric, value in item.values.items():
            if metric not in _valid_ids and not _check_id(metric):
                return _bad_id("metric", metric)
            if not -max_abs <= value <= max_abs:
                return _value_error(metric, value, max_abs)
            append(Reading(device, metric, ts, value, None))
        if len(readings) > max_records:
            return _too_many(len(readings), max_records)
    return Decoded(readings, [])


def _gps(unit_id: str, payload: bytes, received_at: float, limits: Limits) -> Decoded | DecodeError:
    if unit_id not in _valid_ids and not _check_id(unit_id):
        return _bad_id("unit", unit_id)
    try:
        msg = _gps_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return _schema_error(exc)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _json_error(payload, exc)
    except RecursionError:
        return _too_deep()
    items = msg if isinstance(msg, list) else (msg,)
    if len(items) > limits.max_records:
        return _too_many(len(items), limits.max_records)
    lo = received_at - limits.max_past_s
    hi = received_at + limits.max_future_s
    max_abs = limits.max_abs_value
    positions: list[Position] = []
    for item in items:
        ts = item.ts
        if ts is None:
            ts = _ms_to_s(item.ts_ms)
            if ts is None:
                return _ms_error(item.ts_ms)
        elif item.ts_ms is not None:
            return DecodeError("bad_schema", 'give either "ts" or "ts_ms", not both')
        if not lo <= ts <= hi:
            return _time_error(ts, received_at, limits)
        lat = item.lat
        lon = item.lon
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
            return _latlon_error(lat, lon)
        speed = item.speed
        heading = item.heading
        acc = item.acc
        if speed is not None and not 0.0 <= speed <= max_abs:
            return _magnitude_error("speed", speed, max_abs)
        if heading is not None and not 0.0 <= heading <= 360.0:
            return _heading_error("heading", heading)
        if acc is not None and not 0.0 <= acc <= max_abs:
            return _magnitude_error("acc", acc, max_abs)
        positions.append(Position(unit_id, ts, lat, lon, speed, heading, acc))
    return Decoded([], positions)


def _senml(
    source_id: str, payload: bytes, received_at: float, limits: Limits, names: NameMap
) -> Decoded | DecodeError:
    if source_id not in _valid_ids and not _check_id(source_id):
        return _bad_id("source", source_id)
    try:
        pack = _senml_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return _schema_error(exc)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _json_error(payload, exc)
    except RecursionError:
        return _too_deep()
    if len(pack) > limits.max_records:
        return _too_many(len(pack), limits.max_records)
    if b'_"' in payload:  # cheap guard; the exact check decodes again
        err = _must_understand(payload)
        if err is not None:
            return err
    lo = received_at - limits.max_past_s
    hi = received_at + limits.max_future_s
    max_abs = limits.max_abs_value
    # Base fields apply to their record and every later one until replaced (RFC 8428 s4.1).
    bn = ""
    bt = 0.0
    bu: str | None = None
    bv = 0.0
    readings: list[Reading] = []
    for rec in pack:
        if rec.bn is not None:
            bn = rec.bn
        if rec.bt is not None:
            bt = rec.bt
        if rec.bu is not None:
            bu = rec.bu
        if rec.bv is not None:
            bv = rec.bv
        if rec.bver is not None and rec.bver > _SENML_VERSION:
            return DecodeError("unsupported_value", f"SenML version {rec.bver} > {_SENML_VERSION}")
        v = rec.v
        if v is None or rec.vs is not None or rec.vb is not None or rec.vd is not None:
            err = _senml_value_error(rec)
            if err is None:
                continue  # a record carrying only base fields
            if err.code == "unsupported_value" and senml_names.is_descriptive(
                bn if rec.n is None else bn + rec.n
            ):
                continue  # an LwM2M object's units or application type beside its value
            return err
        name = bn if rec.n is None else bn + rec.n
        unit = bu if rec.u is None else rec.u
        if unit is not None and len(unit) > _MAX_UNIT_LEN:
            return DecodeError("bad_schema", f"unit {_short(unit)} longer than {_MAX_UNIT_LEN}")
        # Device and metric: the name split at its last "/" or ":" when that is all it is
        # (the common case, inline); a device alone, an LwM2M path or anything odd goes
        # through the mapping (ingest/senml_names.py).
        sep = max(name.rfind("/"), name.rfind(":"))
        device, metric = (source_id, name) if sep < 0 else (name[:sep], name[sep + 1 :])
        if (
            not metric
            or name in names.devices
            or (metric.isdigit() and sep == name.rfind("/"))
            or (device not in _valid_ids and not _check_id(device))
            or (metric not in _valid_ids and not _check_id(metric))
        ):
            placed = senml_names.resolve(name, unit or None, source_id, names)
            if isinstance(placed, senml_names.Unresolved):
                return DecodeError(placed.code, placed.detail)
            device, metric = placed
        t = bt if rec.t is None else bt + rec.t
        ts = received_at + t if t < _SENML_RELATIVE else t
        if not lo <= ts <= hi:
            return _time_error(ts, received_at, limits)
        value = bv + v
        if not -max_abs <= value <= max_abs:
            return _value_error(name, value, max_abs)
        readings.append(Reading(device, metric, ts, value, unit or None))
    return Decoded(readings, [])


def _owntracks(
    unit_id: str, payload: bytes, received_at: float, limits: Limits
) -> Decoded | DecodeError:
    if unit_id not in _valid_ids and not _check_id(unit_id):
        return _bad_id("unit", unit_id)
    try:
        msg = _owntracks_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        return _schema_error(exc)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return _json_error(payload, exc)
    except RecursionError:
        return _too_deep()
    if msg.type != "location":
        if msg.type == "encrypted":
            return DecodeError("unsupported_value", "OwnTracks payload encryption is not supported")
        return Decoded([], [])
    lat, lon, tst = msg.lat, msg.lon, msg.tst
    if lat is None or lon is None or tst is None:
        return DecodeError("bad_schema", 'OwnTracks location needs "lat", "lon" and "tst"')
    if not received_at - limits.max_past_s <= tst <= received_at + limits.max_future_s:
        return _time_error(tst, received_at, limits)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
        return _latlon_error(lat, lon)
    # Platform location APIs use negative numbers for "unknown"; store those as null.
    max_abs = limits.max_abs_value
    speed = None
    if msg.vel is not None and msg.vel >= 0.0:
        speed = msg.vel / 3.6  # OwnTracks "vel" is km/h
        if speed > max_abs:
            return _value_error("vel", msg.vel, max_abs)
    heading = msg.cog if msg.cog is not None and msg.cog >= 0.0 else None
    if heading is not None and heading > 360.0:
        return _heading_error("cog", heading)
    acc = msg.acc if msg.acc is not None and msg.acc >= 0.0 else None
    if acc is not None and acc > max_abs:
        return _value_error("acc", acc, max_abs)
    return Decoded([], [Position(unit_id, tst, lat, lon, speed, heading, acc)])


# --------------------------------------------------------------------------- cold paths
# Everything below runs only for rejected messages.


def _short(text: str, limit: int = 80) -> str:
    """repr() of untrusted text, bounded so that one bad message cannot bloat logs."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _bad_id(what: str, value: str) -> DecodeError:
    return DecodeError("bad_id", f"{what} id {_short(value)} must match ^[A-Za-z0-9_.:-]{{1,64}}$")


def _too_many(count: int, limit: int) -> DecodeError:
    return DecodeError("too_many", f"{count} records in one message, limit {limit}")


def _too_deep() -> DecodeError:
    # msgspec recurses into fields the typed decoders skip (SenML and OwnTracks ignore
    # unknown fields): ~1,000 levels of [[[...]]] in 2 KB would otherwise raise
    # RecursionError out of decode() and stop the burst it came in.
    return DecodeError("bad_schema", "JSON nested too deeply")


def _schema_error(exc: msgspec.ValidationError) -> DecodeError:
    text = str(exc)
    if text.startswith("Number out of range"):  # e.g. 1e400: beyond a double
        return DecodeError("non_finite", text)
    return DecodeError("bad_schema", text)


def _json_error(payload: bytes, exc: Exception) -> DecodeError:
    if isinstance(exc, UnicodeDecodeError):
        return DecodeError("bad_json", f"payload is not UTF-8: {exc.reason} at byte {exc.start}")
    if not payload:
        return DecodeError("bad_json", "empty payload")
    if (b"NaN" in payload or b"Infinity" in payload) and _has_non_finite_token(payload):
        return DecodeError("non_finite", "NaN or Infinity is not a number in JSON")
    return DecodeError("bad_json", str(exc))


def _has_non_finite_token(payload: bytes) -> bool:
    """True if the payload is valid JSON except for NaN/Infinity/-Infinity tokens.

    msgspec rejects those tokens as malformed JSON; the stdlib parser accepts them
    and reports each one to ``parse_constant``.
    """
    seen: list[str] = []

    def constant(token: str) -> float:
        seen.append(token)
        return 0.0

    try:
        json.loads(bytes(payload).decode("utf-8"), parse_constant=constant)
    except (ValueError, RecursionError):
        return False
    return bool(seen)


def _ms_to_s(ts_ms: int | None) -> float | None:
    if ts_ms is None or not -_MAX_TS_MS <= ts_ms <= _MAX_TS_MS:
        return None
    return ts_ms / 1000.0


def _ms_error(ts_ms: int | None) -> DecodeError:
    if ts_ms is None:
        return DecodeError("bad_schema", 'missing "ts" (UNIX seconds) or "ts_ms"')
    return DecodeError("bad_time", f"ts_ms {ts_ms} is not a plausible time")


def _time_error(ts: float, received_at: float, limits: Limits) -> DecodeError:
    return DecodeError(
        "bad_time",
        f"time {ts!r} is {ts - received_at:+.0f} s from receipt; allowed "
        f"-{limits.max_past_s:.0f}..+{limits.max_future_s:.0f} s",
    )


def _value_error(name: str, value: float, max_abs: float) -> DecodeError:
    return DecodeError("non_finite", f"{_short(name)} = {value!r} is beyond +-{max_abs:g}")


def _latlon_error(lat: float, lon: float) -> DecodeError:
    if lat == 0.0 and lon == 0.0:
        return DecodeError("bad_position", "lat/lon (0, 0) is a receiver without a fix")
    return DecodeError("bad_position", f"lat {lat!r} / lon {lon!r} out of range")


def _magnitude_error(name: str, value: float, max_abs: float) -> DecodeError:
    if value < 0.0:
        return DecodeError("bad_position", f"{name} {value!r} is negative")
    return _value_error(name, value, max_abs)


def _heading_error(name: str, value: float) -> DecodeError:
    return DecodeError("bad_position", f"{name} {value!r} outside 0..360 degrees")


def _senml_value_error(rec: _SenML) -> DecodeError | None:
    """Classify a SenML record whose value is not a lone "v"; None for a base-only record."""
    present = [k for k in ("v", "vs", "vb", "vd") if getattr(rec, k) is not None]
    if len(present) > 1:
        return DecodeError("bad_schema", f"SenML record has several values: {present}")
    if present:
        return DecodeError(
            "unsupported_value", f"SenML {present[0]!r} values are not stored (numeric only)"
        )
    if rec.s is not None:
        return DecodeError("unsupported_value", "SenML sum-only records are not stored")
    if rec.n is not None or rec.u is not None or rec.t is not None:
        return DecodeError("bad_schema", "SenML record has no value")
    return None


def _must_understand(payload: bytes) -> DecodeError | None:
    """RFC 8428 s4.4: a label ending in "_" must be understood; we understand none."""
    try:
        pack = msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # Bytes inside ignored fields are not checked by the typed decoder.
        return _json_error(payload, exc)
    except RecursionError:
        return _too_deep()
    for rec in pack:
        for label in rec:
            if label.endswith("_"):
                return DecodeError(
                    "unsupported_value", f"SenML must-understand field {_short(label)}"
                )
    return None
