"""SenML (resolved name, unit) -> (device, metric): the pure mapping (ingest/senml_names.py)
and the decoder using it (ingest/wire.py), with the registry's devices and overrides."""

from __future__ import annotations

import json

import pytest

from ingest import senml_names as sn
from ingest import wire

NOW = 1767225600.0
URN = "urn:dev:ow:10e2073a01080063"
NAMES = sn.NameMap(devices={URN, "ws-001", "th-7"},
                   overrides={"th-7": {"ug/m3": "pm25", "3300/0/5700": "soil_moisture_pct"}})


def _decode(pack: list[dict[str, object]], names: sn.NameMap = NAMES,
            source: str = "gw-east") -> wire.Decoded | wire.DecodeError:
    return wire.decode(wire.senml_topic(source), json.dumps(pack).encode(), NOW,
                       names=names)


def _placed(res: wire.Decoded | wire.DecodeError) -> list[tuple[str, str, float, str | None]]:
    assert isinstance(res, wire.Decoded), res
    return [(r.device_id, r.metric, r.value, r.unit) for r in res.readings]


# ------------------------------------------------------------- RFC 8428: the device alone
def test_rfc8428_name_is_the_registered_device_metric_from_the_unit() -> None:
    # RFC 8428 s5.1.1/5.1.2: "n" is the device's URN, the unit says what was measured.
    res = _decode([{"n": URN, "u": "Cel", "t": NOW - 10, "v": 23.1},
                   {"n": URN, "u": "Cel", "t": NOW - 5, "v": 23.5}])
    assert _placed(res) == [(URN, "temperature_c", 23.1, "Cel"),
                            (URN, "temperature_c", 23.5, "Cel")]


def test_rfc8428_base_name_with_measurements_told_apart_by_unit() -> None:
    res = _decode([{"bn": URN, "bt": NOW - 1, "u": "Cel", "v": 21.0},
                   {"u": "%RH", "v": 40}, {"u": "lx", "v": 300}])
    assert _placed(res) == [(URN, "temperature_c", 21.0, "Cel"), (URN, "humidity_pct", 40.0, "%RH"),
                            (URN, "illuminance_lx", 300.0, "lx")]


def test_name_ending_in_a_separator_names_the_device_even_unregistered() -> None:
    assert sn.resolve("meter-7:", "kWh", "gw") == ("meter-7", "energy_kwh")
    assert sn.resolve("ws-009/", "dB", "gw") == ("ws-009", "noise_db")
    # no name at all: the topic's source is the device
    assert sn.resolve("", "Cel", "ws-010") == ("ws-010", "temperature_c")


def test_device_and_metric_in_the_name_still_split_at_the_last_separator() -> None:
    assert sn.resolve("ws-001/pm25", "ug/m3", "gw") == ("ws-001", "pm25")
    assert sn.resolve(f"{URN}:temp", None, "gw") == (URN, "temp")
    assert sn.resolve("pm25", None, "ws-009") == ("ws-009", "pm25")
    res = _decode([{"bn": "ws-001/", "n": "pm25", "u": "ug/m3", "v": 35}])
    assert _placed(res) == [("ws-001", "pm25", 35.0, "ug/m3")]


# ------------------------------------------------------------- LwM2M object paths
@pytest.mark.parametrize(("name", "placed"), [
    (f"{URN}:/3303/0/5700", (URN, "temperature_c")),
    (f"{URN}/3304/0/5700", (URN, "humidity_pct")),
    ("ws-001/3301/0/5700", ("ws-001", "illuminance_lx")),
    ("ws-001/3325/0/5700", ("ws-001", "concentration_ppm")),
    ("ws-001/3303/2/5700", ("ws-001", "temperature_c_2")),  # a second sensor: instance 2
    ("/3303/0/5700", ("lwm2m-gw", "temperature_c")),         # no endpoint: the source
])
def test_lwm2m_paths_named_from_the_ipso_registry(name: str, placed: tuple[str, str]) -> None:
    assert sn.resolve(name, None, "lwm2m-gw", NAMES) == placed


def test_lwm2m_read_of_an_object_skips_its_descriptive_string_resources() -> None:
    res = _decode([{"bn": f"{URN}:/3303/0/", "bt": NOW, "n": "5700", "v": 21.5},
                   {"n": "5701", "vs": "Cel"}, {"n": "5750", "vs": "boiler room"},
                   {"n": "5601", "v": 19.0}], names=sn.NameMap(
                       {URN}, {URN: {"3303/0/5601": "temperature_min_c"}}))
    assert _placed(res) == [(URN, "temperature_c", 21.5, None),
                            (URN, "temperature_min_c", 19.0, None)]
    # any other string value still rejects the message (nothing dropped silently)
    bad = _decode([{"bn": f"{URN}:/3303/0/", "n": "5700", "vs": "21.5"}])
    assert isinstance(bad, wire.DecodeError) and bad.code == "unsupported_value"


# ------------------------------------------------------------- per-device overrides
def test_override_wins_over_the_default_and_fills_what_has_none() -> None:
    names = sn.NameMap({"th-7", "ws-001"}, {"th-7": {"Cel": "water_temp_c", "ug/m3": "pm25",
                                                     "3300/0/5700": "soil_moisture_pct"}})
    assert sn.resolve("th-7", "Cel", "gw", names) == ("th-7", "water_temp_c")
    assert sn.resolve("th-7", "ug/m3", "gw", names) == ("th-7", "pm25")
    assert sn.resolve("th-7/3300/0/5700", None, "gw", names) == ("th-7", "soil_moisture_pct")
    # another device keeps the defaults
    assert sn.resolve("ws-001", "Cel", "gw", names) == ("ws-001", "temperature_c")
    res = _decode([{"bn": "th-7", "u": "ug/m3", "v": 12}], names=names)
    assert _placed(res) == [("th-7", "pm25", 12.0, "ug/m3")]


@pytest.mark.parametrize(("key", "metric", "ok"), [
    ("Cel", "temperature_c", True),
    ("ug/m3", "pm25", True),
    ("km/h", "speed_kmh", True),
    ("3303/0/5700", "temp", True),
    ("3303/0", "temp", False),           # not object/instance/resource
    ("3303/0/99999", "temp", False),     # LwM2M ids are 16-bit
    ("", "temp", False),
    ("x" * 33, "temp", False),
    ("Cel", "bad metric", False),        # the id rule
    ("Cel", "", False),
])
def test_override_entries_are_checked(key: str, metric: str, ok: bool) -> None:
    problem = sn.check_override(key, metric)
    assert (problem is None) == ok, problem


# ------------------------------------------------------------- unknown shapes: dead letters
@pytest.mark.parametrize(("pack", "code", "hint"), [
    # a registered device alone with a unit that says nothing of what was measured
    ([{"n": "ws-001", "u": "ug/m3", "v": 35}], "unmapped_name",
     'PUT /api/devices/ws-001/senml-map {"map": {"ug/m3": "<metric>"}}'),
    # ... or with no unit at all
    ([{"bn": "ws-001/", "v": 9}], "unmapped_name", "add the metric to the name"),
    # an LwM2M object without a default (generic sensor)
    ([{"n": "ws-001/3300/0/5700", "v": 3}], "unmapped_name",
     'PUT /api/devices/ws-001/senml-map {"map": {"3300/0/5700": "<metric>"}}'),
    # a name that is none of the shapes
    ([{"bn": "site-1/ws-001/", "n": "pm25", "v": 9}], "bad_id",
     "<device>/<object>/<instance>/<resource>"),
])
def test_unknown_shapes_are_dead_lettered_with_how_to_map_them(
        pack: list[dict[str, object]], code: str, hint: str) -> None:
    res = _decode(pack)
    assert isinstance(res, wire.DecodeError), res
    assert res.code == code
    assert hint in res.detail, res.detail


def test_one_unmapped_record_rejects_the_whole_pack() -> None:
    res = _decode([{"n": URN, "u": "Cel", "v": 20}, {"n": URN, "u": "furlong", "v": 1}])
    assert isinstance(res, wire.DecodeError) and res.code == "unmapped_name"
