"""The demo town's devices: traffic counters, gas and smoke detectors at workplaces, air,
noise and water stations, each strictly inside its second-level grid."""

from __future__ import annotations

import math
import random
from typing import Any

from simulators.demo_town.grids import NOISE_ZONE, GridIndex, village_stem
from simulators.demo_town.plane import to_lonlat, to_metres
from simulators.demo_town.roads import ARTERIAL_NAMES

# -- devices -----------------------------------------------------------------

N_TRAFFIC_CROSSINGS = 64  # counters at intersections
N_TRAFFIC_LINKS = 16  # counters on main-road links
N_SAFETY = 100
N_AIR_EXTRA = 9  # air stations beyond one per first-level grid, in industrial grids
N_NOISE_ROADSIDE = 12
N_NOISE_AREA = 36
N_WATER = 32

MODELS = {
    "traffic_counter": ("traffic", ["vehicle_count", "speed_kmh", "occupancy_pct"], 60),
    "gas_detector": ("safety", ["gas_lel_pct"], 30),
    "smoke_detector": ("safety", ["smoke_obscuration_pct", "temperature_c"], 30),
    "air_station": ("environment", ["pm25", "pm10"], 60),
    "noise_meter": ("environment", ["noise_db"], 60),
    "water_station": ("environment", ["water_level_m", "water_quality_cod_mg_l"], 60),
}
_ID_PREFIX = {"traffic": "TRF", "safety": "SAF", "environment": "ENV"}

_BRANDS = ("华宏", "澄星", "海达", "恒润", "申港", "兴澄", "霞光", "远东", "金鑫", "双良",
           "长电", "新扬子", "阳光", "凯达", "博瑞", "天茂", "联发", "永盛", "鑫泰", "华士",
           "东昌", "润丰", "昌盛", "宏达", "瑞和", "金马", "中南", "佳美", "汇通", "嘉诚")
_INDUSTRIES = (("纺织", "smoke"), ("印染", "gas"), ("化工", "gas"), ("精细化工", "gas"),
               ("机械制造", "smoke"), ("金属制品", "smoke"), ("新材料", "gas"),
               ("电子科技", "smoke"), ("建材", "smoke"), ("塑胶", "smoke"),
               ("热电", "gas"), ("仓储物流", "smoke"))
_OTHER_SITES = (("加油站", "gas"), ("农贸市场", "smoke"), ("安置房项目工地", "smoke"),
                ("商业综合体", "smoke"), ("餐饮一条街", "gas"), ("液化气供应站", "gas"))
RIVERS = ("白屈港", "东横河", "冯泾河", "应天河", "璜塘河", "马镇河", "峭岐河", "湖庄河",
          "南旸岐浜", "北渚浜")


def _device(kind_model: str, seq: int, name: str, ll: list[float],
            grid: dict[str, Any]) -> dict[str, Any]:
    kind, metrics, interval = MODELS[kind_model]
    return {"id": f"{_ID_PREFIX[kind]}-{seq:04d}", "kind": kind, "model": kind_model,
            "name": name, "lon": ll[0], "lat": ll[1], "grid": grid["id"],
            "metrics": list(metrics), "interval_s": interval, "zone": grid["zone"]}


def _road_place(v: dict[str, Any], index: GridIndex) -> str:
    if len(v["names"]) > 1:
        return f"{v['names'][0]}与{v['names'][1]}交叉口"
    return f"{v['names'][0]}{index.by_id[v['grid']['parent']]['name']}段"


def _traffic_devices(rng: random.Random, index: GridIndex,
                     verts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    placed = [v for v in verts if v["grid"]]
    crossings = [v for v in placed if v["degree"] >= 3]
    both = [v for v in crossings if sum(n in ARTERIAL_NAMES for n in v["names"]) >= 2]
    rest = [v for v in crossings if v not in both]
    chosen = both + rng.sample(rest, min(len(rest), N_TRAFFIC_CROSSINGS - len(both)))
    links = [v for v in placed if v["degree"] == 2 and v["class"] == "main"]
    chosen += rng.sample(links, N_TRAFFIC_LINKS)
    return [_device("traffic_counter", k + 1, f"{_road_place(v, index)}车流检测器",
                    v["ll"], v["grid"]) for k, v in enumerate(chosen)]


def _safety_devices(rng: random.Random, index: GridIndex) -> list[dict[str, Any]]:
    children = [g for g in index.by_id.values() if g["level"] == 2]
    industrial = [g for g in children if g["zone"] == "industrial"]
    others = [g for g in children if g["zone"] in ("mixed", "commercial", "residential")]
    out: list[dict[str, Any]] = []
    taken: list[str] = []
    while len(out) < N_SAFETY:
        if rng.random() < 0.75:
            grid = rng.choice(industrial)
            industry, main = rng.choice(_INDUSTRIES)
            site = f"江阴市{rng.choice(_BRANDS)}{industry}有限公司"
        else:
            grid = rng.choice(others)
            kind, main = rng.choice(_OTHER_SITES)
            site = f"{village_stem(index.by_id[grid['parent']]['name'])}{kind}"
        if site in taken:
            continue
        taken.append(site)
        centre = index.random_point(rng, grid, 30.0)
        models = ["gas_detector" if main == "gas" else "smoke_detector"]
        if rng.random() < 0.6:
            models.append("smoke_detector" if main == "gas" else "gas_detector")
        for model in models[:N_SAFETY - len(out)]:
            x, y = to_metres(*centre)
            ll = to_lonlat(x + rng.uniform(-15, 15), y + rng.uniform(-15, 15))
            word = "可燃气体探测器" if model == "gas_detector" else "烟感温感探测器"
            out.append(_device(model, len(out) + 1, f"{site}{word}", ll, grid))
    return out


def _environment_devices(rng: random.Random, index: GridIndex, verts: list[dict[str, Any]],
                         busy: list[list[float]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def put(model: str, name: str, ll: list[float], grid: dict[str, Any],
            noise_zone: str | None = None) -> None:
        dev = _device(model, len(out) + 1, name, ll, grid)
        if noise_zone is not None:
            dev["noise_zone"] = noise_zone
        out.append(dev)

    children = [g for g in index.by_id.values() if g["level"] == 2]
    for parent in index.parents:
        grid = rng.choice(index.children[parent["id"]])
        put("air_station", f"{parent['name']}空气质量监测站",
            index.random_point(rng, grid), grid)
    for grid in rng.sample([g for g in children if g["zone"] == "industrial"], N_AIR_EXTRA):
        put("air_station", f"{grid['name']}空气微站", index.random_point(rng, grid), grid)

    roadside = [v for v in verts if v["grid"] and v["class"] == "main" and v["ll"] not in busy]
    for v in rng.sample(roadside, N_NOISE_ROADSIDE):
        put("noise_meter", f"{_road_place(v, index)}交通噪声监测点", v["ll"], v["grid"], "4")
    for grid in rng.sample(children, N_NOISE_AREA):
        put("noise_meter", f"{grid['name']}区域噪声监测点", index.random_point(rng, grid),
            grid, NOISE_ZONE[grid["zone"]])

    bridges = [v for v in verts if v["grid"] and v["degree"] == 2 and v["class"] != "main"]
    names: list[str] = []
    while len(names) < N_WATER:
        v = rng.choice(bridges)
        angle = rng.uniform(0, 2 * math.pi)
        x, y = to_metres(*v["ll"])
        ll = to_lonlat(x + 30 * math.cos(angle), y + 30 * math.sin(angle))
        found = index.locate(*ll)
        if found is None:
            continue
        grid = found
        name = f"{rng.choice(RIVERS)}{index.by_id[grid['parent']]['name']}段水质水位站"
        if name in names:
            continue
        names.append(name)
        put("water_station", name, ll, grid)
    return out


def make_devices(rng: random.Random, index: GridIndex,
                 verts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    traffic = _traffic_devices(rng, index, verts)
    safety = _safety_devices(rng, index)
    busy = [[d["lon"], d["lat"]] for d in traffic]
    devices = _environment_devices(rng, index, verts, busy) + safety + traffic
    seen: dict[str, int] = {}
    for d in devices:  # operators tell devices apart by name: number repeats
        seen[d["name"]] = n = seen.get(d["name"], 0) + 1
        if n > 1:
            d["name"] += f"（{n}号）"
    return devices
