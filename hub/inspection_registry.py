"""Deterministic demo registries for "double random, one public" inspections (双随机一公开).

Contract
--------
``generate(town)`` is pure and deterministic: from a ``gridhub-town/1`` document (the
demo town is simulators/data/xuxiake.json) it returns the same registries on every run
(one ``random.Random(REGISTRY_SEED)``, inputs walked in sorted order):

- ``inspectors`` (执法检查人员): for every squad, ``INSPECTORS_PER_QUALIFICATION``
  inspectors for each department the squad is qualified for (department = that
  qualification, ``unit_id`` = the squad); two per police patrol group for public
  security. Chinese names, unique.
- ``entities`` (市场主体): every enterprise or site that carries a safety device (the
  device name minus the detector suffix), plus ``SHOPS`` shops, restaurants, hotels,
  construction sites, ... spread over the second-level grids (more in commercial and
  residential ones). Each has an industry (Chinese, matched by the matters) and a risk
  class A (low) .. D (high) from its industry's usual risk, shifted at random by one.
- ``matters`` (抽查事项): ``MATTERS``, each with its department and the industries it
  applies to (empty: every entity).
- ``conflicts`` (回避): ``CONFLICTS`` inspector-entity pairs with a reason, each between an
  inspector and an entity that one of the inspector's matters could draw together.

``load_registry(conn)`` upserts them (after the town itself is loaded: entities reference
grids and inspectors units).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import asyncpg

from hub import town

TOWN_FILE = Path(__file__).resolve().parents[1] / "simulators" / "data" / "xuxiake.json"
REGISTRY_SEED = 5  # any fixed number: the demo registries never change between runs

# 2-3 inspectors per (squad, department): every department of a matter ends up with at
# least six town-wide, enough for two-person teams around a few recusals.
INSPECTORS_PER_QUALIFICATION = (2, 3)
POLICE_INSPECTORS = 2
SHOPS = 170  # with ~60 device sites: ~230 entities, a township's order of magnitude
CONFLICTS = 10

# (id, name, department, description, industries); industries empty = every entity.
MATTERS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("M01", "安全生产检查", "work_safety", "安全生产主体责任、隐患排查治理落实情况",
     ("危险化学品", "燃气经营", "机械加工", "建材", "仓储物流", "热电", "印染", "塑料制品",
      "纺织", "电子制造", "加油站")),
    ("M02", "食品经营检查", "market_supervision", "食品经营许可、进货查验、从业人员健康证明",
     ("餐饮服务", "食品销售", "超市", "农贸市场")),
    ("M03", "环保排污检查", "environment", "排污许可、污染防治设施运行、废水废气排放",
     ("印染", "危险化学品", "热电", "建材", "塑料制品", "汽车维修", "纺织")),
    ("M04", "消防安全检查", "fire", "消防设施器材、疏散通道、消防安全管理制度", ()),
    ("M05", "公共场所卫生检查", "health", "卫生许可、从业人员健康证明、公共用品消毒",
     ("宾馆", "美容美发", "网吧", "歌舞娱乐")),
    ("M06", "文化市场检查", "culture", "经营许可、未成年人保护、内容合规",
     ("网吧", "歌舞娱乐")),
    ("M07", "价格计量检查", "market_supervision", "明码标价、计量器具检定",
     ("加油站", "超市", "药店", "农贸市场", "商业综合体")),
    ("M08", "建筑施工安全检查", "housing_construction", "施工安全、扬尘治理、文明施工",
     ("建筑施工",)),
    ("M09", "市容秩序检查", "city_management", "门前三包、店外经营、户外广告设置",
     ("餐饮服务", "食品销售", "超市", "五金建材", "汽车维修", "洗车", "美容美发")),
    ("M10", "校外培训机构检查", "education", "办学许可、收费公示、安全管理", ("校外培训",)),
    ("M11", "排水许可检查", "water", "排水许可、隔油池和沉淀池设置",
     ("餐饮服务", "洗车", "汽车维修", "印染", "农贸市场")),
)

# Device-site name keyword -> (industry, usual risk class index 0=A .. 3=D). First match
# wins, so the more specific keyword comes first.
_SITE_INDUSTRIES: tuple[tuple[str, str, int], ...] = (
    ("液化气供应站", "燃气经营", 3), ("精细化工", "危险化学品", 3), ("化工", "危险化学品", 3),
    ("印染", "印染", 2), ("热电", "热电", 2), ("仓储物流", "仓储物流", 2),
    ("金属制品", "机械加工", 1), ("机械制造", "机械加工", 1), ("新材料", "建材", 1),
    ("建材", "建材", 1), ("电子科技", "电子制造", 1), ("塑胶", "塑料制品", 1),
    ("纺织", "纺织", 1), ("商业综合体", "商业综合体", 2), ("农贸市场", "农贸市场", 2),
    ("工地", "建筑施工", 2), ("餐饮一条街", "餐饮服务", 1),
)
_DEVICE_SUFFIXES = ("可燃气体探测器", "烟感温感探测器")

# Shop industry -> (weight among shops, usual risk index, name endings).
_SHOP_INDUSTRIES: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "餐饮服务": (30, 1, ("饭店", "面馆", "小吃店", "大排档", "火锅店", "酒家")),
    "食品销售": (16, 1, ("食品店", "熟食店", "烘焙坊", "粮油店")),
    "超市": (10, 1, ("超市", "便利店")),
    "药店": (6, 1, ("大药房", "药店")),
    "宾馆": (6, 1, ("宾馆", "酒店", "旅馆")),
    "美容美发": (8, 0, ("美发店", "美容院")),
    "网吧": (4, 2, ("网咖",)),
    "歌舞娱乐": (4, 2, ("KTV", "歌厅")),
    "汽车维修": (7, 1, ("汽修厂", "汽车服务中心")),
    "洗车": (4, 0, ("洗车行",)),
    "加油站": (3, 3, ("加油站",)),
    "校外培训": (6, 1, ("培训中心", "教育", "艺术学校")),
    "五金建材": (6, 0, ("五金店", "建材商行")),
    "建筑施工": (5, 2, ("安置房项目工地", "商住楼项目工地", "厂房扩建工地")),
}
_BRANDS = ("鑫源", "福满", "佳乐", "万家", "聚福", "金港", "阳光", "和顺", "兴隆", "祥和",
           "惠民", "百味", "顺发", "美佳", "康乐", "天和", "永盛", "华联", "益民", "新概念",
           "乐购", "好邻居", "合家欢", "旺角", "老街")
# Second-level grid zone -> weight for placing shops.
_ZONE_WEIGHTS = {"commercial": 6, "residential": 4, "mixed": 4, "rural": 1, "industrial": 1}

_SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐"
             "许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈")
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志红玉兰文斌浩宇晨欣怡婷雪峰海波辉俊"

_CONFLICT_REASONS = (
    "近亲属在该企业担任负责人", "配偶在该企业任职", "三年内曾在该企业任职",
    "近亲属持有该企业股份", "曾参与该企业行政许可审批", "与该企业负责人存在经济往来",
)
RISK_CLASSES = ("A", "B", "C", "D")


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        given = "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2, 2))))
        name = rng.choice(_SURNAMES) + given
        if name not in used:
            used.add(name)
            return name


def _risk(rng: random.Random, base: int) -> str:
    shift = rng.choices((-1, 0, 1), weights=(2, 6, 2))[0]
    return RISK_CLASSES[max(0, min(3, base + shift))]


def _place(name: str) -> str:
    for suffix in ("社区", "村"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _inspectors(town: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    used: set[str] = set()
    out: list[dict[str, Any]] = []
    units = sorted(town.get("units", []), key=lambda u: u["id"])
    for u in units:
        if u["type"] == "squad":
            teams = [(q, rng.randint(*INSPECTORS_PER_QUALIFICATION))
                     for q in u.get("qualifications", [])]
        elif u["type"] == "police":
            teams = [("public_security", POLICE_INSPECTORS)]
        else:
            continue
        for department, n in teams:
            for _ in range(n):
                out.append({"id": f"INS-{len(out) + 1:03d}", "name": _name(rng, used),
                            "department": department, "unit_id": u["id"], "active": True})
    return out


def _entities(town: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for d in sorted(town.get("devices", []), key=lambda d: d["id"]):
        if d["kind"] != "safety":
            continue
        site = d["name"]
        for suffix in _DEVICE_SUFFIXES:
            site = site.removesuffix(suffix)
        if site in names or site == d["name"]:
            continue
        match = next(((ind, base) for kw, ind, base in _SITE_INDUSTRIES if kw in site), None)
        if match is None:
            continue
        names.add(site)
        out.append({"name": site, "grid_id": d["grid"], "industry": match[0],
                    "risk_class": _risk(rng, match[1]), "lon": d["lon"], "lat": d["lat"]})

    features = [f for f in town["grids"]["features"] if f["properties"]["level"] == 2]
    features.sort(key=lambda f: f["properties"]["id"])
    parents = {f["properties"]["id"]: f["properties"]["name"]
               for f in town["grids"]["features"] if f["properties"]["level"] == 1}
    weights = [_ZONE_WEIGHTS.get(f["properties"].get("zone") or "", 1) for f in features]
    industries = sorted(_SHOP_INDUSTRIES)
    ind_weights = [_SHOP_INDUSTRIES[i][0] for i in industries]
    for _ in range(SHOPS):
        f = rng.choices(features, weights=weights)[0]
        industry = rng.choices(industries, weights=ind_weights)[0]
        _, base, endings = _SHOP_INDUSTRIES[industry]
        place = _place(parents.get(f["properties"].get("parent"), ""))
        name = f"{place}{rng.choice(_BRANDS)}{rng.choice(endings)}"
        branch = 2
        while name in names:
            name = f"{place}{rng.choice(_BRANDS)}{rng.choice(endings)}（{branch}店）"
            branch += 1
        names.add(name)
        ring = f["geometry"]["coordinates"][0][:-1]
        cx = sum(p[0] for p in ring) / len(ring)
        cy = sum(p[1] for p in ring) / len(ring)
        corner = rng.choice(ring)
        t = rng.uniform(0.0, 0.7)  # the cells are convex: between centre and corner is inside
        out.append({"name": name, "grid_id": f["properties"]["id"], "industry": industry,
                    "risk_class": _risk(rng, base),
                    "lon": round(cx + t * (corner[0] - cx), 6),
                    "lat": round(cy + t * (corner[1] - cy), 6)})
    for k, e in enumerate(out, start=1):
        e["id"] = f"ME-{k:04d}"
        e["active"] = True
    return out


def _matters() -> list[dict[str, Any]]:
    return [{"id": mid, "name": name, "department": dept, "description": desc,
             "industries": list(inds)} for mid, name, dept, desc, inds in MATTERS]


def _conflicts(inspectors: list[dict[str, Any]], entities: list[dict[str, Any]],
               matters: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    attempts = 0
    while len(out) < CONFLICTS and attempts < CONFLICTS * 20:
        attempts += 1
        m = matters[len(out) % len(matters)]
        pool = [i for i in inspectors if i["department"] == m["department"]]
        scope = [e for e in entities if not m["industries"] or e["industry"] in m["industries"]]
        if not pool or not scope:
            continue
        pair = (rng.choice(pool)["id"], rng.choice(scope)["id"])
        if pair in seen:
            continue
        seen.add(pair)
        out.append({"inspector_id": pair[0], "entity_id": pair[1],
                    "reason": rng.choice(_CONFLICT_REASONS)})
    return out


def generate(town: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The registries of a town document (see the module docstring); deterministic."""
    rng = random.Random(REGISTRY_SEED)
    inspectors = _inspectors(town, rng)
    entities = _entities(town, rng)
    matters = _matters()
    return {"inspectors": inspectors, "entities": entities, "matters": matters,
            "conflicts": _conflicts(inspectors, entities, matters, rng)}


def read_town(path: Path = TOWN_FILE) -> dict[str, Any]:
    """The demo town's document (hub/town.py reads and checks it)."""
    return town.read_town(path)


async def load_registry(conn: asyncpg.Connection,
                        town: dict[str, Any] | None = None) -> dict[str, int]:
    """Upsert the registries of ``town`` (default: the demo town) in one transaction.

    The town itself must be loaded first. Returns counts by kind.
    """
    reg = generate(town if town is not None else read_town())
    async with conn.transaction():
        await conn.executemany(
            """INSERT INTO inspectors (id, name, department, unit_id, active)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                 department = excluded.department, unit_id = excluded.unit_id,
                 active = excluded.active""",
            [(i["id"], i["name"], i["department"], i["unit_id"], i["active"])
             for i in reg["inspectors"]])
        await conn.executemany(
            """INSERT INTO market_entities (id, name, grid_id, industry, risk_class, lon, lat,
                                            active)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (id) DO UPDATE SET name = excluded.name, grid_id = excluded.grid_id,
                 industry = excluded.industry, risk_class = excluded.risk_class,
                 lon = excluded.lon, lat = excluded.lat, active = excluded.active""",
            [(e["id"], e["name"], e["grid_id"], e["industry"], e["risk_class"], e["lon"],
              e["lat"], e["active"]) for e in reg["entities"]])
        await conn.executemany(
            """INSERT INTO inspection_matters (id, name, department, description, industries)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                 department = excluded.department, description = excluded.description,
                 industries = excluded.industries""",
            [(m["id"], m["name"], m["department"], m["description"], m["industries"])
             for m in reg["matters"]])
        await conn.executemany(
            """INSERT INTO inspector_conflicts (inspector_id, entity_id, reason)
               VALUES ($1, $2, $3)
               ON CONFLICT (inspector_id, entity_id) DO UPDATE SET reason = excluded.reason""",
            [(c["inspector_id"], c["entity_id"], c["reason"]) for c in reg["conflicts"]])
    return {k: len(v) for k, v in reg.items()}
