"""Hostile MQTT messages for the fuzz tests: hypothesis strategies (the property test of the
pure decoder) and a seeded generator built on the same shapes (the run against a real hub,
where every message must be reproducible from the seed in a failure message).

The shapes: random bytes, deep nesting, huge numbers, NaN/Infinity, wrong types, oversized
payloads, far-future and far-past times, unknown devices and units, SenML and OwnTracks
variants, each on the topics that route to a decoder and on some that do not.
"""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import strategies as st

from ingest import wire

# Ids the fuzz uses for "known" things are passed in by the caller; these are never known.
UNKNOWN_DEVICE = "FUZZ-NO-SUCH-DEVICE"
UNKNOWN_UNIT = "FUZZ-NO-SUCH-UNIT"

# Numbers that hurt: overflow, underflow, beyond int64/2**53, negative zero, the limits.
HOSTILE_NUMBERS: list[Any] = [
    0, -0.0, 1, -1, 1e15, 1e15 + 1, -1e15, 1e16, 1.7976931348623157e308, -1.7976931348623157e308,
    5e-324, 2**53, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**400, 3.141592653589793,
]
# JSON tokens json.dumps cannot produce: spliced in as text.
HOSTILE_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400,
                  "0x10", "01", "1.", ".5", "+1", "true", "null", '"12"', "[]", "{}"]
IDS = ["a", "x" * 64, "x" * 65, "bad id!", "dev/ice", "dev+", "über", "\u0000", "", "_", "-.:"]


def topics(known_devices: list[str], known_units: list[str]) -> list[str]:
    devs = [*known_devices, UNKNOWN_DEVICE]
    units = [*known_units, UNKNOWN_UNIT]
    out = [wire.telemetry_topic(d) for d in devs]
    out += [wire.gateway_telemetry_topic("gw-fuzz"), wire.senml_topic("src-fuzz")]
    out += [wire.gps_topic(u) for u in units] + [f"owntracks/fuzz/{u}" for u in units]
    out += ["gridhub/v1/devices/bad id!/telemetry", "gridhub/v1/devices/x/other",
            "gridhub/v2/devices/x/telemetry", "owntracks/a", "unrelated/topic"]
    return out


# ------------------------------------------------------------------ hypothesis strategies
json_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HOSTILE_NUMBERS),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30)
times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(),
    st.sampled_from(["now", "future", "past", "epoch", "ms"]))
ids = st.one_of(st.sampled_from(IDS), st.text(max_size=70))


def _dumps(value: Any) -> bytes:
    """JSON with NaN/Infinity allowed (they are what is being tested) and big ints kept."""
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _time(t: Any, now: float) -> Any:
    return {"now": now, "future": now + 86400 * 365, "past": now - 86400 * 400,
            "epoch": 0, "ms": int(now * 1000)}.get(t, t) if isinstance(t, str) else t


@st.composite
def native_telemetry(draw: st.DrawFn, now: float) -> bytes:
    rec: dict[str, Any] = {
        draw(st.sampled_from(["ts", "ts_ms", "time"])): _time(draw(times), now),
        "values": draw(st.one_of(
            st.dictionaries(ids, st.one_of(st.sampled_from(HOSTILE_NUMBERS), json_values),
                            max_size=4),
            json_values)),
    }
    if draw(st.booleans()):
        rec[draw(st.sampled_from(["device", "extra", "ts"]))] = draw(json_values)
    body: Any = rec if draw(st.booleans()) else [rec] * draw(st.integers(0, 3))
    return _dumps(body)


@st.composite
def senml_pack(draw: st.DrawFn, now: float) -> bytes:
    keys = ["bn", "bt", "bu", "bv", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "x_",
            "ut"]
    recs = draw(st.lists(st.dictionaries(
        st.sampled_from(keys),
        st.one_of(st.sampled_from(HOSTILE_NUMBERS), json_scalars, ids,
                  st.just(now), st.just(now + 86400 * 365)), max_size=6), max_size=4))
    return _dumps(recs)


@st.composite
def owntracks(draw: st.DrawFn, now: float) -> bytes:
    msg = draw(st.dictionaries(
        st.sampled_from(["_type", "lat", "lon", "tst", "acc", "vel", "cog", "tid", "batt"]),
        st.one_of(st.sampled_from(["location", "lwt", "encrypted", "waypoint"]),
                  st.sampled_from(HOSTILE_NUMBERS), json_scalars, st.just(int(now))),
        max_size=9))
    return _dumps(msg)


@st.composite
def gps(draw: st.DrawFn, now: float) -> bytes:
    msg = draw(st.dictionaries(
        st.sampled_from(["ts", "ts_ms", "lat", "lon", "speed", "heading", "acc", "alt"]),
        st.one_of(st.sampled_from(HOSTILE_NUMBERS), json_scalars, st.just(now)), max_size=8))
    return _dumps(msg)


@st.composite
def spliced(draw: st.DrawFn, now: float) -> bytes:
    """A valid message with one number replaced by a token JSON does not allow."""
    base = wire.encode_telemetry(now, {"pm25": 12.5}).decode()
    return base.replace("12.5", draw(st.sampled_from(HOSTILE_TOKENS))).encode()


def deep(depth: int, kind: str = "[") -> bytes:
    if kind == "[":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@st.composite
def nested(draw: st.DrawFn, now: float) -> bytes:
    depth = draw(st.integers(1, 30000))
    inner = deep(depth, draw(st.sampled_from(["[", "{"])))
    wrap = draw(st.sampled_from([
        b"%s", b'[{"n":"pm25","v":1,"x_":%s}]', b'[{"n":"pm25","v":1,"x":%s}]',
        b'{"_type":"location","extra":%s}', b'{"ts":1,"values":{"a":%s}}']))
    return wrap.replace(b"%s", inner)


def payloads(now: float) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300), native_telemetry(now), senml_pack(now), owntracks(now),
        gps(now), spliced(now), nested(now), json_values.map(_dumps),
        st.integers(60_000, 140_000).map(lambda n: b"[" + b" " * n + b"]"))


# ------------------------------------------------------------------ seeded generator
def hostile_messages(rng: random.Random, now: float, known_devices: list[str],
                     known_units: list[str], count: int) -> list[tuple[str, bytes]]:
    """``count`` (topic, payload) pairs, the same for the same seed. Oversized payloads stay
    under the broker's max_packet_size (270,000) so that the broker delivers them and the
    hub is the one to refuse them."""
    tops = topics(known_devices, known_units)
    dev = known_devices[0]
    unit = known_units[0]
    makers = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))),
        lambda: deep(rng.randint(500, 20000), rng.choice("[{")),
        lambda: b'[{"n":"pm25","v":1,"x":' + deep(rng.randint(500, 20000)) + b"}]",
        lambda: b'{"_type":"location","lat":31.8,"lon":120.4,"tst":%d,"x":%s}'
        % (int(now), deep(rng.randint(500, 20000))),
        lambda: b'{"ts":%r,"values":{"pm25":%s}}' % (now, rng.choice(HOSTILE_TOKENS).encode()),
        lambda: _dumps({"ts": rng.choice([now + 86400 * 3650, now - 86400 * 3650, 0, -1,
                                          1e300, 2**70]), "values": {"pm25": 1}}),
        lambda: _dumps({"ts": now, "values": {"pm25": rng.choice(HOSTILE_NUMBERS)}}),
        lambda: _dumps({"ts": now, "values": rng.choice([[], "high", None, 1, {"a": {}}])}),
        lambda: _dumps({"ts": now, "values": {rng.choice(IDS): 1}, "\u0000": 1}),
        lambda: b"[" + b" " * rng.randint(70_000, 200_000) + b"]",
        lambda: _dumps([{"bn": rng.choice([f"{dev}/", "", "x" * 80, "\u0000/"]),
                         "bt": rng.choice([now, 0, 1e308, -1e308, now + 1e9]),
                         "n": rng.choice(["pm25", "", "a b"]),
                         rng.choice(["v", "vs", "vb", "s", "x_"]):
                             rng.choice([1, "on", True, 1e308, None])}]),
        lambda: _dumps({"_type": rng.choice(["location", "lwt", "encrypted", 5]),
                        "lat": rng.choice([31.8, 0, 91, -1e308, "31"]),
                        "lon": rng.choice([120.4, 0, 181]),
                        "tst": rng.choice([int(now), 0, int(now) + 10**8, "now"]),
                        "vel": rng.choice([-1, 36, 1e300]), "cog": rng.choice([-1, 90, 361])}),
        lambda: _dumps({"ts": now, "lat": rng.choice([31.8, 95, 0]),
                        "lon": rng.choice([120.4, 0, -200]),
                        "speed": rng.choice([None, -1, 1e16, 3]),
                        rng.choice(["heading", "alt"]): 400}),
        lambda: _dumps(rng.choice([None, True, 1, "text", [], {}])),
    ]
    out = []
    for _ in range(count):
        topic = rng.choice(tops)
        if rng.random() < 0.2:  # aim some at a known device / unit, where they could store
            topic = rng.choice([wire.telemetry_topic(dev), wire.gps_topic(unit),
                                f"owntracks/fuzz/{unit}"])
        out.append((topic, rng.choice(makers)()))
    return out
