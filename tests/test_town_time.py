"""Rules' active hours are the town's hours (Settings.town_tz), not a fixed UTC+8."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from core.town_time import UnknownZone, seconds_of_day
from ingest.subjects import in_hours, parse_hours
from ingest.watch import AlarmWatch

NIGHT = parse_hours("22:00-06:00")


def _at(text: str, tz: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(("local", "tz", "inside"), [
    ("2026-06-01 23:30", "Asia/Shanghai", True),
    ("2026-06-01 05:59", "Asia/Shanghai", True),
    ("2026-06-01 06:00", "Asia/Shanghai", False),
    ("2026-06-01 21:59", "Asia/Shanghai", False),
    # A town elsewhere: its own night, daylight saving included (CEST in June, CET in
    # January), which no fixed offset gives.
    ("2026-06-01 22:30", "Europe/Berlin", True),
    ("2026-01-15 22:30", "Europe/Berlin", True),
    ("2026-06-01 12:00", "Europe/Berlin", False),
])
def test_night_hours_follow_the_towns_zone(local: str, tz: str, inside: bool) -> None:
    assert in_hours(NIGHT, _at(local, tz), tz) is inside


def test_the_same_instant_is_night_in_one_town_and_day_in_another() -> None:
    ts = _at("2026-06-01 23:00", "Asia/Shanghai")  # 17:00 in Berlin
    assert in_hours(NIGHT, ts, "Asia/Shanghai")
    assert not in_hours(NIGHT, ts, "Europe/Berlin")
    assert seconds_of_day(ts, "Europe/Berlin") == 17 * 3600


def test_an_unknown_zone_fails_at_start() -> None:
    with pytest.raises(UnknownZone):
        AlarmWatch(None, "Mars/Olympus")  # type: ignore[arg-type]  # no I/O here
