"""The demo town's units: enforcement squads (every department covered), police patrols
and grid workers, each starting on a road vertex inside its home grid."""

from __future__ import annotations

import random
from typing import Any

from core.town_format import DEPARTMENTS
from simulators.demo_town.grids import GRID_COLS, GRID_ROWS, N_LEVEL1, GridIndex, cn_numeral

# -- units -------------------------------------------------------------------

N_POLICE = 12
# Nine all-round squads, one per area of first-level grids (three areas of
# 2/3/2 columns in each row), plus three squads patrolling the arterials.
_AREA_COLUMNS = ((0, 1), (2, 3, 4), (5, 6))
_ROAD_SQUAD_HOMES = ("G09", "G11", "G13")
# Each department is covered by this many squads at least (others: 2).
MIN_SQUADS_PER_DEPARTMENT = {"work_safety": 3, "environment": 3, "city_management": 3}
GRID_WORKER_QUALIFICATIONS = ["city_management", "environment"]
POLICE_QUALIFICATIONS = ["public_security", "traffic"]


def _squad_qualifications(rng: random.Random, seeds: list[list[str]]) -> list[list[str]]:
    """3-6 departments per squad, filling the least-covered departments first."""
    sizes = [rng.randint(max(3, len(s)), 6) for s in seeds]
    while sum(sizes) < 3 * len(DEPARTMENTS):  # enough slots for every department x3
        k = rng.choice([k for k, n in enumerate(sizes) if n < 6])
        sizes[k] += 1
    counts = dict.fromkeys(DEPARTMENTS, 0)
    for s in seeds:
        for d in s:
            counts[d] += 1
    out = []
    for seed, size in zip(seeds, sizes, strict=True):
        ranked = sorted((counts[d] - (d in MIN_SQUADS_PER_DEPARTMENT), rng.random(), d)
                        for d in DEPARTMENTS if d not in seed)
        chosen = seed + [d for _, _, d in ranked[:size - len(seed)]]
        for d in chosen[len(seed):]:
            counts[d] += 1
        out.append([d for d in DEPARTMENTS if d in chosen])
    for d, n in counts.items():
        if n < MIN_SQUADS_PER_DEPARTMENT.get(d, 2):
            raise RuntimeError(f"department {d} covered by {n} squads only")
    return out


def make_units(rng: random.Random, index: GridIndex,
               verts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_parent: dict[str, list[dict[str, Any]]] = {g["id"]: [] for g in index.parents}
    for v in verts:
        if v["grid"]:
            by_parent[v["grid"]["parent"]].append(v)
    taken: list[list[float]] = []

    def start(parent_id: str, arterial: bool) -> dict[str, Any]:
        """A road vertex inside the grid, preferring free (and arterial) ones."""
        pool = by_parent[parent_id]
        free = [v for v in pool if v["ll"] not in taken]
        major = [v for v in free if v["class"] != "local"] if arterial else free
        options = major or free or pool
        if not options:
            raise RuntimeError(f"no road vertex inside {parent_id}")
        v = rng.choice(options)
        taken.append(v["ll"])
        return v

    def unit(uid: str, name: str, kind: str, quals: list[str], v: dict[str, Any],
             members: int) -> dict[str, Any]:
        return {"id": uid, "name": name, "type": kind, "qualifications": quals,
                "home_grid": v["grid"]["id"], "lon": v["ll"][0], "lat": v["ll"][1],
                "members": members}

    homes = []
    for row in range(GRID_ROWS):
        for cols in _AREA_COLUMNS:
            homes.append(f"G{row * GRID_COLS + cols[len(cols) // 2] + 1:02d}")
    seeds = [["city_management"]] * len(homes) + \
        [["city_management", "traffic"]] * len(_ROAD_SQUAD_HOMES)
    quals = _squad_qualifications(rng, seeds)
    units = []
    for k, home in enumerate(homes):
        village = index.by_id[home]["name"]
        units.append(unit(f"SQ-{k + 1:02d}", f"综合执法{cn_numeral(k + 1)}中队（{village}片区）",
                          "squad", quals[k], start(home, False), rng.randint(6, 10)))
    for k, home in enumerate(_ROAD_SQUAD_HOMES):
        n = len(homes) + k
        units.append(unit(f"SQ-{n + 1:02d}", f"道路巡查{cn_numeral(k + 1)}中队", "squad", quals[n],
                          start(home, True), rng.randint(4, 6)))
    for k, p in enumerate(sorted(rng.sample(range(N_LEVEL1), N_POLICE))):
        units.append(unit(f"PO-{k + 1:02d}", f"徐霞客派出所巡逻{cn_numeral(k + 1)}组", "police",
                          list(POLICE_QUALIFICATIONS), start(f"G{p + 1:02d}", True),
                          rng.randint(2, 3)))
    for k, parent in enumerate(index.parents):
        units.append(unit(f"GW-{k + 1:02d}", f"{parent['name']}网格员", "grid_worker",
                          list(GRID_WORKER_QUALIFICATIONS), start(parent["id"], False),
                          rng.randint(1, 2)))
    return units
