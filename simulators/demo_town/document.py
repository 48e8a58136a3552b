"""The demo town document: ``generate(seed)`` (pure, deterministic) and ``to_json``
(byte-stable); ``python -m simulators.demo_town`` writes simulators/data/xuxiake.json."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from core.town_format import DEPARTMENTS, FORMAT
from simulators.demo_town.grids import GridIndex, grid_features, make_grids
from simulators.demo_town.plane import to_lonlat, to_metres
from simulators.demo_town.roads import (
    ARTERIAL_COLS,
    ARTERIAL_ROWS,
    make_roads,
    road_features,
    road_vertices,
)
from simulators.demo_town.roster import make_units
from simulators.demo_town.sensors import make_devices

DEFAULT_SEED = 2026
TOWN_NAME = "徐霞客镇"
TOWN_NAME_EN = "Xuxiake Town"
COMMAND_CENTER_NAME = "徐霞客镇综合指挥中心"


# -- the document --------------------------------------------------------------

def generate(seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The whole town document for a seed (pure, deterministic)."""
    rng = random.Random(seed)
    grids = make_grids(rng)
    index = GridIndex(grids)
    roads = make_roads(rng, index)
    verts = road_vertices(roads, index)
    devices = make_devices(rng, index, verts)
    units = make_units(rng, index, verts)
    # The command center sits just off the crossing of the two main roads.
    main_names = [ARTERIAL_ROWS[5][0], ARTERIAL_COLS[6][0]]
    crossing = next(v for v in verts if all(n in v["names"] for n in main_names))
    cx, cy = to_metres(*crossing["ll"])
    lon, lat = to_lonlat(cx + 60.0, cy + 45.0)
    return {
        "format": FORMAT,
        "name": TOWN_NAME,
        "name_en": TOWN_NAME_EN,
        "seed": seed,
        "command_center": {"name": COMMAND_CENTER_NAME, "lon": lon, "lat": lat},
        "grids": grid_features(grids),
        "roads": road_features(roads),
        "devices": devices,
        "units": units,
        "departments": dict(DEPARTMENTS),
    }


def to_json(doc: dict[str, Any]) -> str:
    """The canonical text of a document: byte-identical for equal documents."""
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo town document.")
    parser.add_argument("--out", type=Path, default=Path("simulators/data/xuxiake.json"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(generate(args.seed)), encoding="utf-8", newline="\n")


if __name__ == "__main__":
    main()
