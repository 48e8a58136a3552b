"""Golden payload samples for ingest/wire.py, plus the encoders and topic helpers.

Each tests/golden/wire/*.json file is one message:
- ``topic``, ``received_at`` (UNIX seconds);
- the payload as exactly one of ``payload`` (a JSON value, sent as compact UTF-8
  JSON), ``payload_text`` (raw text, sent as UTF-8, for invalid JSON) or
  ``payload_hex`` (raw bytes, for invalid UTF-8);
- optional ``limits`` (overrides of ``Limits`` fields);
- either ``error`` (an error code) or ``expect`` with ``readings`` and ``positions``.
"""

import json
import math
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ingest import wire

GOLDEN = Path(__file__).parent / "golden" / "wire"
CASES = sorted(GOLDEN.glob("*.json"))
NOW = 1767225600.0


def _load(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return case


def _payload(case: dict[str, Any]) -> bytes:
    forms = [k for k in ("payload", "payload_text", "payload_hex") if k in case]
    assert len(forms) == 1, f"exactly one payload form, got {forms}"
    if "payload" in case:
        return json.dumps(case["payload"], ensure_ascii=False, separators=(",", ":")).encode()
    if "payload_text" in case:
        return str(case["payload_text"]).encode()
    return bytes.fromhex(case["payload_hex"])


def _rows(items: list[Any]) -> list[dict[str, Any]]:
    """Dicts with floats rounded, so that 1767225595.123 from ts_ms compares equal."""
    rows = []
    for item in items:
        row = item if isinstance(item, dict) else msgspec.structs.asdict(item)
        rows.append({k: round(v, 6) if isinstance(v, float | int) else v for k, v in row.items()})
    return rows


def _decode(case: dict[str, Any]) -> wire.Decoded | wire.DecodeError:
    limits = wire.Limits(**case["limits"]) if "limits" in case else wire.DEFAULT_LIMITS
    return wire.decode(case["topic"], _payload(case), case["received_at"], limits)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path) -> None:
    case = _load(path)
    result = _decode(case)
    if "error" in case:
        assert isinstance(result, wire.DecodeError), f"expected {case['error']}, got {result}"
        assert result.code == case["error"], result.detail
        assert result.detail
    else:
        assert isinstance(result, wire.Decoded), result
        assert _rows(result.readings) == _rows(case["expect"]["readings"])
        assert _rows(result.positions) == _rows(case["expect"]["positions"])


def test_golden_samples_cover_every_error_code() -> None:
    used = {_load(p).get("error") for p in CASES} - {None}
    assert used <= set(wire.ERROR_CODES), used - set(wire.ERROR_CODES)
    assert set(wire.ERROR_CODES) <= used, set(wire.ERROR_CODES) - used


def test_error_codes_are_unique() -> None:
    assert len(set(wire.ERROR_CODES)) == len(wire.ERROR_CODES) == 11


def test_too_large_with_default_limits() -> None:
    topic = wire.telemetry_topic("ws-001")
    big = wire.encode_telemetry(NOW, {f"m{i}": float(i) for i in range(5000)})
    assert len(big) > 64 * 1024
    result = wire.decode(topic, big, NOW)
    assert isinstance(result, wire.DecodeError) and result.code == "too_large"
    # the limit is inclusive
    edge = wire.decode(topic, b"{" + b" " * (64 * 1024 - 2) + b"}", NOW)
    assert isinstance(edge, wire.DecodeError) and edge.code == "bad_schema"


def test_too_many_with_default_limits() -> None:
    topic = wire.telemetry_topic("ws-001")
    ok = wire.decode(topic, wire.encode_telemetry(NOW, {f"m{i}": 1.0 for i in range(1000)}), NOW)
    assert isinstance(ok, wire.Decoded) and len(ok.readings) == 1000
    over = wire.decode(topic, wire.encode_telemetry(NOW, {f"m{i}": 1.0 for i in range(1001)}), NOW)
    assert isinstance(over, wire.DecodeError) and over.code == "too_many"


def test_encode_telemetry_round_trip() -> None:
    payload = wire.encode_telemetry(NOW - 1.5, {"pm25": 35.2, "pm10": 60})
    result = wire.decode(wire.telemetry_topic("ws-001"), payload, NOW)
    assert result == wire.Decoded(
        [
            wire.Reading("ws-001", "pm25", NOW - 1.5, 35.2, None),
            wire.Reading("ws-001", "pm10", NOW - 1.5, 60.0, None),
        ],
        [],
    )


def test_encode_gps_round_trip() -> None:
    full = wire.encode_gps(NOW, 30.27, 120.15, speed=1.5, heading=90.0, acc=4.0)
    minimal = wire.encode_gps(NOW, 30.27, 120.15)
    assert json.loads(minimal) == {"ts": NOW, "lat": 30.27, "lon": 120.15}
    topic = wire.gps_topic("patrol-07")
    assert wire.decode(topic, full, NOW) == wire.Decoded(
        [], [wire.Position("patrol-07", NOW, 30.27, 120.15, 1.5, 90.0, 4.0)]
    )
    assert wire.decode(topic, minimal, NOW) == wire.Decoded(
        [], [wire.Position("patrol-07", NOW, 30.27, 120.15, None, None, None)]
    )


def test_topic_helpers() -> None:
    assert wire.telemetry_topic("ws-001") == "gridhub/v1/devices/ws-001/telemetry"
    assert wire.gateway_telemetry_topic("gw-1") == "gridhub/v1/gateways/gw-1/telemetry"
    assert wire.gps_topic("p7") == "gridhub/v1/units/p7/gps"
    assert wire.senml_topic("gw-1") == "gridhub/v1/senml/gw-1"
    assert wire.command_topic("p7") == "gridhub/v1/units/p7/commands"


@pytest.mark.parametrize("bad", ["", "+", "#", "a/b", "监测点", "x" * 65, "a b"])
@pytest.mark.parametrize(
    "helper",
    [
        wire.telemetry_topic,
        wire.gateway_telemetry_topic,
        wire.gps_topic,
        wire.senml_topic,
        wire.command_topic,
    ],
)
def test_topic_helpers_reject_bad_ids(helper: Any, bad: str) -> None:
    with pytest.raises(ValueError):
        helper(bad)


@pytest.mark.parametrize("sub", wire.SUBSCRIPTIONS)
def test_every_subscription_routes_to_a_decoder(sub: str) -> None:
    topic = sub.replace("+", "id-1")
    result = wire.decode(topic, b"{}", NOW)
    assert not (isinstance(result, wire.DecodeError) and result.code == "unknown_topic"), result


def test_command_topic_is_not_subscribed() -> None:
    result = wire.decode(wire.command_topic("p7"), b"{}", NOW)
    assert isinstance(result, wire.DecodeError) and result.code == "unknown_topic"


def test_never_raises_on_mutated_payloads() -> None:
    """Byte-level mutations of every golden payload: decode returns a value, never raises."""
    rng = random.Random(8428)
    for path in CASES:
        case = _load(path)
        base = _payload(case)
        for _ in range(60):
            data = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                op = rng.random()
                pos = rng.randrange(len(data) + 1)
                if op < 0.4 and data:
                    data[min(pos, len(data) - 1)] = rng.randrange(256)
                elif op < 0.7:
                    data.insert(pos, rng.choice(b'{}[]",:0.-e9NaIfty_\\\xff'))
                elif data:
                    del data[min(pos, len(data) - 1)]
            result = wire.decode(case["topic"], bytes(data), NOW)
            assert isinstance(result, wire.Decoded | wire.DecodeError)
            if isinstance(result, wire.DecodeError):
                assert result.code in wire.ERROR_CODES
            else:
                for r in result.readings:
                    assert math.isfinite(r.value) and math.isfinite(r.ts)
