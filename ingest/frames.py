"""MQTT PUBLISH packets split out of received bytes: pure code for the ingest fast path.

paho handles the session (CONNECT, SUBSCRIBE, keepalive, acknowledgements, every other
packet); ingest/mqtt.py hands it everything except the PUBLISH packets at the head of its
read buffer, which this module decodes directly. In py-spy of the ingest process paho's
Python per-PUBLISH work (message and info objects, callback dispatch, topic matching) was
about half of all samples; a whole PUBLISH is a fixed header, a topic and a payload.

Layout (MQTT 3.1.1 section 3.3, MQTT 5 section 3.3): byte 0 = 0x30 | DUP<<3 | QoS<<1 |
RETAIN; the remaining length as a variable byte integer (1-4 bytes, 7 bits each, low
first); a two-byte topic length and the topic (UTF-8); a two-byte packet id when QoS > 0;
in MQTT 5 a properties block (variable byte integer length, then the properties); the
payload is the rest.
"""

from __future__ import annotations

from typing import NamedTuple

PUBLISH = 0x30


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    mid: int  # 0 for QoS 0


class MalformedPacket(ValueError):
    """A PUBLISH that cannot be decoded: the connection is broken beyond repair."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """A variable byte integer at ``pos``: (value, position after it), or None if the
    bytes stop before it does."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= end:
            return None
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def split_publishes(buf: bytes, pos: int, *, v5: bool, out: list[Publish]) -> int:
    """Decode the whole QoS 0/1 PUBLISH packets from ``buf[pos:]`` into ``out``.

    Stops at the first packet that is not a PUBLISH, is QoS 2, or is not wholly in ``buf``
    (the caller's protocol library takes it from there); returns the position reached.
    Raises :class:`MalformedPacket` for a PUBLISH whose fields overrun its own length.
    """
    end = len(buf)
    while pos + 2 <= end:
        first = buf[pos]
        if first & 0xF0 != PUBLISH:
            break
        qos = (first >> 1) & 0x03
        if qos > 1:
            break
        rl = _varint(buf, pos + 1, end)
        if rl is None:
            break
        length, body = rl
        stop = body + length
        if stop > end:
            break
        if length < 2:
            raise MalformedPacket("PUBLISH too short for its topic length")
        tlen = (buf[body] << 8) | buf[body + 1]
        p = body + 2 + tlen
        if qos:
            if p + 2 > stop:
                raise MalformedPacket("PUBLISH too short for its packet id")
            mid = (buf[p] << 8) | buf[p + 1]
            p += 2
        else:
            mid = 0
        if v5:
            props = _varint(buf, p, stop)
            if props is None:
                raise MalformedPacket("PUBLISH too short for its properties")
            plen, p = props
            p += plen
        if p > stop:
            raise MalformedPacket("PUBLISH fields overrun its remaining length")
        try:
            topic = buf[body + 2:body + 2 + tlen].decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedPacket("PUBLISH topic is not UTF-8") from e
        out.append(Publish(topic, buf[p:stop], qos, mid))
        pos = stop
    return pos
