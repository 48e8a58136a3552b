"""Pure tests of the PUBLISH fast path (ingest/frames.py) against packets built here from
the MQTT specification, including the cases where it must stop and leave bytes to paho."""

from __future__ import annotations

import pytest

from ingest.frames import MalformedPacket, Publish, split_publishes


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload: bytes, qos: int = 1, mid: int = 7, *, v5: bool = False,
            props: bytes = b"", dup: bool = False, retain: bool = False) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += varint(len(props)) + props
    body += payload
    first = 0x30 | (dup << 3) | (qos << 1) | int(retain)
    return bytes([first]) + varint(len(body)) + body


PUBACK = b"\x40\x02\x00\x07"
PINGRESP = b"\xd0\x00"


def split(buf: bytes, v5: bool = False, pos: int = 0) -> tuple[list[Publish], int]:
    out: list[Publish] = []
    return out, split_publishes(buf, pos, v5=v5, out=out)


@pytest.mark.parametrize("size", [0, 1, 127 - 9, 128, 16_383, 16_384, 2_097_152])
def test_remaining_length_of_every_width(size: int) -> None:
    pkt = publish("gridhub/v1/devices/d1/telemetry", b"x" * size, mid=65535)
    out, pos = split(pkt)
    assert pos == len(pkt)
    assert out == [Publish("gridhub/v1/devices/d1/telemetry", b"x" * size, 1, 65535)]


def test_qos0_has_no_packet_id_and_flags_do_not_matter() -> None:
    buf = publish("a/b", b"p0", qos=0) + publish("a/c", b"p1", dup=True, retain=True)
    out, pos = split(buf)
    assert out == [Publish("a/b", b"p0", 0, 0), Publish("a/c", b"p1", 1, 7)]
    assert pos == len(buf)


def test_mqtt5_properties_are_skipped() -> None:
    props = b"\x01\x01" + b"\x03\x00\x10application/json"  # format indicator, content type
    pkt = publish("城管/设备", b'{"v":1}', v5=True, props=props)
    out, pos = split(pkt, v5=True)
    assert out == [Publish("城管/设备", b'{"v":1}', 1, 7)] and pos == len(pkt)


def test_stops_at_a_packet_that_is_not_a_publish_and_resumes_after_it() -> None:
    a, b = publish("t/1", b"one"), publish("t/2", b"two")
    buf = a + PUBACK + b + PINGRESP
    out, pos = split(buf)
    assert [p.topic for p in out] == ["t/1"] and pos == len(a)
    out, pos = split(buf, pos=pos + len(PUBACK))
    assert [p.topic for p in out] == ["t/2"] and pos == len(buf) - len(PINGRESP)


def test_stops_at_qos2_and_at_a_partial_packet() -> None:
    whole = publish("t/1", b"one")
    assert split(whole + publish("t/2", b"x", qos=2)) == ([Publish("t/1", b"one", 1, 7)],
                                                          len(whole))
    pkt = publish("t/3", b"y" * 300)
    for cut in range(1, len(pkt)):  # every split point, the length bytes included
        out, pos = split(whole + pkt[:cut])
        assert pos == len(whole) and len(out) == 1


@pytest.mark.parametrize("bad", [
    b"\x32\x01\x00",                        # too short for the topic length
    b"\x32\x04\x00\x02ab",                  # topic fits, packet id does not
    b"\x32\x05\x00\x09abc",                 # topic length past the packet
    b"\x30\x04\x00\x02\xff\xfe",            # topic not UTF-8
    b"\x30\xff\xff\xff\xff\x01",            # length longer than four bytes
])
def test_malformed_publish_is_refused(bad: bytes) -> None:
    with pytest.raises(MalformedPacket):
        split(bad)
