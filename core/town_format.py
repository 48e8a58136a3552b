"""The town file format (``gridhub-town/1``): its name and the vocabularies every producer
of a town shares: the demo generator (simulators/demo_town/), the GeoJSON import
(hub/town_geojson.py) and the loader (hub/town.py).
"""

from __future__ import annotations

FORMAT = "gridhub-town/1"

# The twelve departments a unit may be qualified for, with their Chinese names.
DEPARTMENTS = {
    "city_management": "城管",
    "work_safety": "安监",
    "environment": "环保",
    "traffic": "交通",
    "public_security": "公安",
    "fire": "消防",
    "water": "水务",
    "health": "卫生",
    "education": "教育",
    "culture": "文化",
    "market_supervision": "市场监管",
    "housing_construction": "住建",
}

# Free-flow speeds by road class, km/h.
SPEED_KMH = {"main": 60, "secondary": 40, "local": 30}
