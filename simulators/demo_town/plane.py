"""The demo town's local plane: its centre and extent, metres <-> [lon, lat] (accurate to
well under a metre over the town), and the margin kept from grid edges."""

from __future__ import annotations

import math

CENTER_LON = 120.43
CENTER_LAT = 31.80
WIDTH_M = 12_000.0  # east-west extent of the town
HEIGHT_M = 10_000.0  # north-south extent

_PHI = math.radians(CENTER_LAT)
# Length of a degree at the town's latitude (WGS84 series); a local plane is
# accurate to well under a metre over 12 km.
M_PER_DEG_LAT = 111_132.92 - 559.82 * math.cos(2 * _PHI) + 1.175 * math.cos(4 * _PHI)
M_PER_DEG_LON = 111_412.84 * math.cos(_PHI) - 93.5 * math.cos(3 * _PHI)

# Devices and unit start points keep this distance from their grid's edge so
# that point-in-polygon never depends on rounding.
MIN_MARGIN_M = 5.0


Point = tuple[float, float]


def to_lonlat(x: float, y: float) -> list[float]:
    """Local metres (east, north of the centre) -> [lon, lat] rounded to 6 decimals."""
    return [round(CENTER_LON + x / M_PER_DEG_LON, 6), round(CENTER_LAT + y / M_PER_DEG_LAT, 6)]


def to_metres(lon: float, lat: float) -> Point:
    """[lon, lat] -> local metres east and north of the town centre."""
    return ((lon - CENTER_LON) * M_PER_DEG_LON, (lat - CENTER_LAT) * M_PER_DEG_LAT)


def segment_distance(p: Point, a: Point, b: Point) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    t = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy)
                                              / length2))
    return math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy)
