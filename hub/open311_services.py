"""The township's Open311 services and their attribute definitions; checking a report's
``attribute[...]`` fields against them (pure).

A service with attributes says ``metadata: true`` in the service list, and its definition
(``services/{code}``) lists them as the specification has it: ``code``, ``datatype``
(``string``, ``number``, ``datetime``, ``text``, ``singlevaluelist``, ``multivaluelist``),
``required``, ``order``, ``description``, ``values``. Answers to some attributes raise the
case's priority (a pothole that blocks traffic is more urgent than a cracked kerb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Attribute:
    code: str
    datatype: str
    required: bool
    description: str
    values: tuple[tuple[str, str], ...] = ()  # (key, name) for the list types
    # Answer key -> the priority the case gets at least (1 is the most urgent).
    raises_priority: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Service:
    code: str
    name: str
    group: str
    qualification: str  # the department qualification a case needs (dispatch)
    priority: int
    attributes: tuple[Attribute, ...] = ()
    keywords: str = ""


YES_NO = (("yes", "是"), ("no", "否"))
# Text attributes are short: a detail, not a second description.
MAX_TEXT = 200

SERVICES: dict[str, Service] = {s.code: s for s in (
    Service("city_order", "占道经营/乱堆乱放", "城市管理", "city_management", 3),
    Service("illegal_construction", "违章搭建", "住房建设", "housing_construction", 3),
    Service("pollution", "环境污染（废水/废气/垃圾）", "环境保护", "environment", 3, (
        Attribute("pollution_kind", "singlevaluelist", True, "污染类型",
                  (("water", "废水/河道污染"), ("air", "废气/烟尘/异味"),
                   ("waste", "垃圾/固废倾倒"), ("other", "其他"))),
        Attribute("ongoing", "singlevaluelist", True, "现在是否仍在排放", YES_NO,
                  {"yes": 2}),
        Attribute("source_hint", "string", False, "疑似来源（企业名称、排口位置等）"),
    )),
    Service("noise", "噪声扰民", "环境保护", "environment", 4),
    Service("safety_hazard", "安全隐患", "安全生产", "work_safety", 2),
    Service("road_damage", "道路/设施损坏", "交通", "traffic", 3, (
        Attribute("damage_kind", "singlevaluelist", True, "损坏类型",
                  (("pothole", "路面坑洞"), ("manhole", "井盖缺失/破损"),
                   ("streetlight", "路灯不亮"), ("guardrail", "护栏损坏"),
                   ("sign", "交通标志损坏"))),
        Attribute("blocks_traffic", "singlevaluelist", True, "是否影响通行", YES_NO,
                  {"yes": 2}),
        Attribute("size_m", "number", False, "损坏范围约多少米"),
    )),
    Service("public_order", "治安问题", "公共安全", "public_security", 2),
    Service("flooding", "积水/河道问题", "水务", "water", 2, (
        Attribute("depth", "singlevaluelist", True, "积水深度",
                  (("ankle", "没过脚踝"), ("knee", "没过膝盖"), ("deeper", "更深")),
                  {"knee": 2, "deeper": 1}),
        Attribute("affected", "multivaluelist", False, "受影响的对象",
                  (("road", "道路"), ("homes", "住户"), ("farmland", "农田"),
                   ("shops", "商铺"))),
    )),
    Service("food_safety", "食品安全", "市场监管", "market_supervision", 3),
)}


class BadAttributes(ValueError):
    """A report's attributes do not fit the service's definition (message for the client)."""


def service_list_entry(s: Service) -> dict[str, Any]:
    return {"service_code": s.code, "service_name": s.name, "description": s.name,
            "metadata": bool(s.attributes), "type": "realtime", "keywords": s.qualification,
            "group": s.group}


def definition(s: Service) -> dict[str, Any]:
    return {"service_code": s.code, "attributes": [
        {"variable": True, "code": a.code, "datatype": a.datatype, "required": a.required,
         "datatype_description": None, "order": i, "description": a.description,
         "values": [{"key": k, "name": n} for k, n in a.values]}
        for i, a in enumerate(s.attributes, start=1)]}


def check_attributes(s: Service, given: dict[str, list[str]]
                     ) -> tuple[dict[str, Any], int, list[str]]:
    """Validate ``attribute[code]`` answers: (answers to store, the case's priority, lines
    describing the answers for the case). Raises ``BadAttributes`` saying what is wrong."""
    known = {a.code: a for a in s.attributes}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise BadAttributes(f"service {s.code} has no attribute {', '.join(unknown)}"
                              + (f"; it has {', '.join(known)}" if known else ""))
    answers: dict[str, Any] = {}
    lines: list[str] = []
    priority = s.priority
    for a in s.attributes:
        raw = [v.strip() for v in given.get(a.code, []) if v.strip()]
        if not raw:
            if a.required:
                raise BadAttributes(f"attribute[{a.code}] ({a.description}) is required")
            continue
        names = dict(a.values)
        if a.datatype in ("singlevaluelist", "multivaluelist"):
            if a.datatype == "singlevaluelist" and len(raw) > 1:
                raise BadAttributes(f"attribute[{a.code}] takes one value")
            bad = [v for v in raw if v not in names]
            if bad:
                raise BadAttributes(f"attribute[{a.code}]: {bad[0]!r} is not one of "
                                      f"{', '.join(names)}")
            # Several answers in the definition's order, each once.
            value: Any = (raw[0] if a.datatype == "singlevaluelist"
                          else [k for k in names if k in raw])
            shown = "、".join(names[v] for v in ([value] if isinstance(value, str) else value))
            for v in raw:
                priority = min(priority, a.raises_priority.get(v, priority))
        elif a.datatype == "number":
            try:
                value = float(raw[0])
            except ValueError:
                raise BadAttributes(f"attribute[{a.code}] must be a number") from None
            if value != value or value in (float("inf"), float("-inf")):
                raise BadAttributes(f"attribute[{a.code}] must be a finite number")
            shown = f"{value:g}"
        elif a.datatype == "datetime":
            try:
                value = datetime.fromisoformat(raw[0].replace("Z", "+00:00")).isoformat()
            except ValueError:
                raise BadAttributes(f"attribute[{a.code}] must be ISO 8601") from None
            shown = value
        else:  # string, text
            value = raw[0][:MAX_TEXT]
            shown = value
        answers[a.code] = value
        lines.append(f"【{a.description}】{shown}")
    return answers, priority, lines
