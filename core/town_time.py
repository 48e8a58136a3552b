"""The town's local time: its zone and the seconds of its day. Pure.

One notion for every part that asks "what time is it in the town": ingest's rules with
active hours (``ingest/subjects.in_hours``), dispatch's working calendar and "today"
(``dispatch/sla_config``, which takes the same ``Settings.town_tz``). ``tz`` is an IANA
zone name (``Settings.town_tz``; ``DEFAULT_TOWN_TZ`` unless the town sets
``HUB_TOWN_TZ``); zones with daylight saving are handled by the zone database.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Mainland China is one zone, UTC+8 all year; the demo town is there.
DEFAULT_TOWN_TZ = "Asia/Shanghai"


class UnknownZone(ValueError):
    """``tz`` is not a zone the zone database knows."""


@lru_cache(maxsize=16)
def zone(tz: str) -> ZoneInfo:
    """The zone named ``tz`` (cached: rules ask once per reading)."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise UnknownZone(f"unknown time zone {tz!r}") from e


def seconds_of_day(ts: float, tz: str) -> float:
    """Seconds since the town's last midnight at UNIX time ``ts``."""
    local = datetime.fromtimestamp(ts, zone(tz))
    return local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
