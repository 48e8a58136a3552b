"""Open311 GeoReport v2 endpoint for citizen reports, so existing Open311 clients can file
cases with the township (JSON format; http://wiki.open311.org/GeoReport_v2).

Requests become incidents in state ``reported`` (source ``open311``): an operator verifies
and registers them like hotline reports. Errors follow the specification: an array of
``{"code", "description"}`` with the HTTP status.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.db import row_view
from core.entities import INCIDENT_COLUMNS
from dispatch import service as dispatch_service
from hub.params import BIGINT_MAX

router = APIRouter(prefix="/open311/v2")

# A report is a few lines of text: anything bigger is not a citizen report.
MAX_BODY_BYTES = 16 * 1024
MAX_DESCRIPTION = 2000
MAX_LIST = 1000

# service_code -> (name, group, the qualification a case needs, priority)
SERVICES: dict[str, tuple[str, str, str, int]] = {
    "city_order": ("占道经营/乱堆乱放", "城市管理", "city_management", 3),
    "illegal_construction": ("违章搭建", "住房建设", "housing_construction", 3),
    "pollution": ("环境污染（废水/废气/垃圾）", "环境保护", "environment", 3),
    "noise": ("噪声扰民", "环境保护", "environment", 4),
    "safety_hazard": ("安全隐患", "安全生产", "work_safety", 2),
    "road_damage": ("道路/设施损坏", "交通", "traffic", 3),
    "public_order": ("治安问题", "公共安全", "public_security", 2),
    "flooding": ("积水/河道问题", "水务", "water", 2),
    "food_safety": ("食品安全", "市场监管", "market_supervision", 3),
}
CLOSED_STATES = frozenset({"closed", "evaluated", "archived", "cancelled"})


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse([{"code": status, "description": description}], status_code=status)


def _iso(ts: Any) -> str | None:
    if ts is None:
        return None
    dt = ts if isinstance(ts, datetime) else datetime.fromtimestamp(float(ts), UTC)
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _request_view(r: Any) -> dict[str, Any]:
    name = SERVICES.get(r["category"], (r["category"],))[0]
    return {
        "service_request_id": str(r["id"]),
        "status": "closed" if r["state"] in CLOSED_STATES else "open",
        "status_notes": r["state"],
        "service_name": name,
        "service_code": r["category"],
        "description": r["description"],
        "agency_responsible": r["assigned_unit"],
        "requested_datetime": _iso(r["opened_at"]),
        "updated_datetime": _iso(r["updated_at"]),
        "address": None,
        "lat": r["lat"],
        "long": r["lon"],
    }


@router.get("/services.json")
async def services() -> list[dict[str, Any]]:
    return [{"service_code": code, "service_name": name, "description": name,
             "metadata": False, "type": "realtime", "keywords": qual, "group": group}
            for code, (name, group, qual, _) in SERVICES.items()]


@router.get("/services/{service_code}.json", response_model=None)
async def service_definition(service_code: str) -> dict[str, Any] | JSONResponse:
    if service_code not in SERVICES:
        return _error(404, f"service_code {service_code!r} not found")
    return {"service_code": service_code, "attributes": []}


async def _form(request: Request) -> dict[str, str] | JSONResponse:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _error(413, "request too large")
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("application/json"):
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                return _error(400, "body must be a JSON object")
            return {k: str(v) for k, v in data.items() if v is not None}
        text = body.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return _error(400, "body is not valid UTF-8 form data or JSON")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=False).items()}


@router.post("/requests.json", status_code=201, response_model=None)
async def create_request(request: Request) -> list[dict[str, Any]] | JSONResponse:
    form = await _form(request)
    if isinstance(form, JSONResponse):
        return form
    code = form.get("service_code", "")
    if code not in SERVICES:
        return _error(400, "service_code missing or unknown; see services.json")
    try:
        lat, lon = float(form["lat"]), float(form["long"])
    except (KeyError, ValueError):
        return _error(400, "lat and long are required (WGS-84 decimal degrees)")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat, lon) == (0.0, 0.0):
        return _error(400, "lat/long out of range")
    description = form.get("description", "").strip()[:MAX_DESCRIPTION]
    who = " ".join(x for x in (form.get("first_name"), form.get("last_name")) if x)
    contact = form.get("phone") or form.get("email") or ""
    name, _, qual, priority = SERVICES[code]
    address = form.get("address_string", "")[:200]
    view = await dispatch_service.open_incident(
        request.app.state.hub.pool, category=code, qualification=qual, priority=priority,
        title=f"市民报告：{name}" + (f"（{address}）" if address else ""),
        description=description + (f"\n联系人：{who} {contact}".rstrip() if who or contact
                                   else ""),
        lon=lon, lat=lat, source="open311", reporter=f"open311:{contact or 'anonymous'}"[:64])
    return [{"service_request_id": str(view["id"]),
             "service_notice": "已受理，等待指挥中心核实立案", "account_id": None}]


@router.get("/requests.json", response_model=None)
async def list_requests(request: Request, service_request_id: str | None = None,
                        service_code: str | None = None, start_date: str | None = None,
                        end_date: str | None = None, status: str | None = None
                        ) -> list[dict[str, Any]] | JSONResponse:
    clauses = ["i.source = 'open311'"]
    args: list[Any] = []
    if service_request_id:
        try:
            ids = [int(x) for x in service_request_id.split(",")][:MAX_LIST]
            if any(not 0 <= i <= BIGINT_MAX for i in ids):
                raise ValueError("id out of range")
        except ValueError:
            return _error(400, "service_request_id must be comma-separated ids")
        args.append(ids)
        clauses.append(f"i.id = ANY(${len(args)})")
    if service_code:
        args.append(service_code)
        clauses.append(f"i.category = ${len(args)}")
    for value, op in ((start_date, ">="), (end_date, "<=")):
        if value:
            try:
                args.append(datetime.fromisoformat(value.replace("Z", "+00:00")))
            except ValueError:
                return _error(400, "dates must be ISO 8601 (w3c format)")
            clauses.append(f"i.opened_at {op} ${len(args)}")
    if status:
        wanted = set(status.split(","))
        if not wanted <= {"open", "closed"}:
            return _error(400, "status is open and/or closed")
        if wanted == {"open"}:
            clauses.append("i.state NOT IN ('closed','evaluated','archived','cancelled')")
        elif wanted == {"closed"}:
            clauses.append("i.state IN ('closed','evaluated','archived','cancelled')")
    rows = await request.app.state.hub.pool.fetch(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE {' AND '.join(clauses)} "
        f"ORDER BY i.id DESC LIMIT {MAX_LIST}", *args)
    return [_request_view(row_view(r)) for r in rows]


@router.get("/requests/{request_id}.json", response_model=None)
async def get_request(request: Request, request_id: str) -> list[dict[str, Any]] | JSONResponse:
    # ASCII digits only ("¹".isdigit() is true, and int() refuses it), and within bigint.
    if not (request_id.isascii() and request_id.isdigit()) or int(request_id) > BIGINT_MAX:
        return _error(404, f"service request {request_id} not found")
    row = await request.app.state.hub.pool.fetchrow(
        f"SELECT {INCIDENT_COLUMNS} FROM incidents i WHERE i.id = $1 AND i.source = 'open311'",
        int(request_id))
    if row is None:
        return _error(404, f"service request {request_id} not found")
    return [_request_view(row_view(row))]
