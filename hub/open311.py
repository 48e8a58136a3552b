"""Open311 GeoReport v2 (http://wiki.open311.org/GeoReport_v2), so stock Open311 clients
can read the township's services and citizen reports and file new ones.

Public, without login (hub/access.py lists the routes as PUBLIC), rate-limited per client
address (``Settings.open311_requests_per_minute``), every route in JSON and XML by its
extension (hub/open311_formats.py), errors in the specification's shape in both:

- ``GET discovery.{fmt}``, ``GET services.{fmt}``, ``GET services/{code}.{fmt}`` (the
  attribute definitions, hub/open311_services.py);
- ``GET requests.{fmt}`` (filters ``service_request_id``, ``service_code``, ``start_date``,
  ``end_date``, ``status``; the last 90 days by default), ``GET requests/{id}.{fmt}``: only
  cases reported through Open311, as citizens may see them (hub/open311_views.py);
- ``POST requests.{fmt}``: form fields ``api_key`` (an application's key, hub/open311_keys.py,
  rate-limited per key; the application is the case's channel), ``jurisdiction_id``,
  ``service_code``, ``lat``/``long`` or ``address_string`` (hub/gazetteer.py),
  ``description``, ``media_url``, ``attribute[code]``, and contact fields, which go to the
  contact table (hub/contacts.py) and nowhere else.

A report becomes an incident in state ``reported`` (source ``open311``, reporter
``open311:<app>``): an operator verifies and registers it like a hotline report.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlparse

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from core.errors import InvalidInput
from dispatch import service as dispatch_service
from hub import contacts, gazetteer, open311_keys
from hub import open311_formats as formats
from hub import open311_services as catalog
from hub.open311_views import pick_lang, request_view
from hub.params import BIGINT_MAX
from hub.rate_limit import Buckets
from hub.state import get_hub

router = APIRouter(prefix="/open311/v2")

# The specification's limits: a description of up to 4,000 characters, a date range of at
# most 90 days (also the default range). MAX_LIST bounds one answer's size.
MAX_DESCRIPTION = 4000
# A report is a few lines of text and some short fields (4,000 characters of Chinese are
# 12 KB in UTF-8): anything bigger is not a citizen report.
MAX_BODY_BYTES = 16 * 1024
MAX_RANGE = timedelta(days=90)
MAX_LIST = 1000
MAX_MEDIA_URL = 1000
MAX_ADDRESS = 200
# Town data (names, departments) changes only when a town is re-loaded: re-read this often.
TOWN_CACHE_S = 300.0
# A key may file a quarter of its hourly allowance at once: an app that was offline
# uploading what its users filed meanwhile.
KEY_BURST_SHARE = 0.25
SPEC_URL = "http://wiki.open311.org/GeoReport_v2"
# Discovery's changeset: when this endpoint's documents last changed shape (clients cache
# discovery and re-read it when this moves).
CHANGESET = "2026-12-03T00:00:00Z"
_ATTR = re.compile(r"^attribute\[([A-Za-z0-9_]{1,64})\](\[\])?$")

# The format in the schema is json or xml; checked by the handler (not by validation), so
# any other extension gets the specification's 404 error rather than a validation error.
Fmt = Annotated[str, Path(json_schema_extra={"enum": list(formats.FORMATS)})]
# The report form as the schema shows it (the handler reads the raw form: attribute[...]
# fields have names no fixed model can list).
_FORM_FIELDS = ("api_key", "jurisdiction_id", "service_code", "lat", "long",
                "address_string", "description", "media_url", "first_name", "last_name",
                "phone", "email", "device_id", "locale")
REPORT_FORM = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": {
        "type": "object", "required": ["api_key", "service_code"],
        "properties": {**{f: {"type": "string"} for f in _FORM_FIELDS},
                       **{f"attribute[{a.code}]": {"type": "string"}
                          for s in catalog.SERVICES.values() for a in s.attributes}}}}}}}


@dataclass
class _TownInfo:
    jurisdiction_id: str
    name: str
    contact: str  # who answers for the endpoint: the town's command center
    departments: dict[str, str]
    gazetteer: gazetteer.Gazetteer
    bbox: tuple[float, float, float, float] | None
    loaded_at: float


@dataclass
class Open311State:
    """Per-process state: the rate-limit buckets and the cached town data."""

    per_address: Buckets
    per_key: Buckets
    town: _TownInfo | None = None


def jurisdiction_of(name_en: str | None, name: str | None) -> str:
    """The town's jurisdiction id: its English name, lower case, words joined by '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", (name_en or "").lower()).strip("-")
    return slug or (name or "town")


def _state(request: Request) -> Open311State:
    st: Open311State | None = getattr(request.app.state, "open311", None)
    if st is None:
        s = get_hub(request).settings
        rpm = max(1, s.open311_requests_per_minute)
        rph = max(1, s.open311_reports_per_hour_per_key)
        st = Open311State(Buckets(rpm / 60.0, float(rpm)),
                          Buckets(rph / 3600.0, max(1.0, rph * KEY_BURST_SHARE)))
        request.app.state.open311 = st
    return st


async def _town(request: Request) -> _TownInfo:
    st = _state(request)
    now = time.monotonic()
    if st.town is None or now - st.town.loaded_at > TOWN_CACHE_S:
        pool = get_hub(request).pool
        meta = await pool.fetchval("SELECT value FROM town WHERE key = 'meta'") or {}
        gaz = await gazetteer.load(pool)
        boxes = list(gaz.village_bbox.values())
        bbox = ((min(b[0] for b in boxes), min(b[1] for b in boxes),
                 max(b[2] for b in boxes), max(b[3] for b in boxes)) if boxes else None)
        st.town = _TownInfo(jurisdiction_of(meta.get("name_en"), meta.get("name")),
                            meta.get("name") or "",
                            (meta.get("command_center") or {}).get("name") or "",
                            dict(meta.get("departments") or {}),
                            gaz, bbox, now)
    return st.town


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _limited(request: Request, fmt: str | None) -> Response | None:
    wait = _state(request).per_address.take(_client(request), time.monotonic())
    if wait <= 0:
        return None
    return formats.error(fmt, 429, "too many requests from this address; slow down",
                         {"Retry-After": str(max(1, round(wait)))})


async def _preamble(request: Request, fmt: str, jurisdiction_id: str | None
                    ) -> tuple[str, Response | None]:
    """The format, and a refusal if the format, the rate or the jurisdiction is wrong."""
    f = formats.fmt_of(fmt)
    refused = _limited(request, f)
    if refused is not None:
        return f or "json", refused
    if f is None:
        return "json", formats.error(None, 404, f"format {fmt[:20]!r} not supported: "
                                     "use .json or .xml")
    if jurisdiction_id is not None:
        town = await _town(request)
        if jurisdiction_id != town.jurisdiction_id:
            return f, formats.error(f, 404, f"jurisdiction_id {jurisdiction_id[:60]!r} not "
                                    f"found; this endpoint serves {town.jurisdiction_id!r}")
    return f, None


# ---------------------------------------------------------------- reading
@router.get("/discovery.{fmt}", response_model=None)
async def discovery(request: Request, fmt: Fmt) -> Response:
    f, refused = await _preamble(request, fmt, None)
    if refused:
        return refused
    town = await _town(request)
    base = str(request.base_url).rstrip("/") + router.prefix
    return formats.render(f, "discovery", {
        "changeset": CHANGESET,
        "contact": town.contact,
        "key_service": "API keys are issued per client application by the hub's "
                       "administrator (POST /api/open311/keys)",
        "endpoints": [{"specification": SPEC_URL,
                       "url": base, "changeset": CHANGESET, "type": "production",
                       "formats": ["application/json", "text/xml"]}],
    })


@router.get("/services.{fmt}", response_model=None)
async def services(request: Request, fmt: Fmt, jurisdiction_id: str | None = None
                   ) -> Response:
    f, refused = await _preamble(request, fmt, jurisdiction_id)
    if refused:
        return refused
    return formats.render(f, "services",
                          [catalog.service_list_entry(s) for s in catalog.SERVICES.values()])


@router.get("/services/{service_code}.{fmt}", response_model=None)
async def service_definition(request: Request, service_code: str, fmt: Fmt,
                             jurisdiction_id: str | None = None) -> Response:
    f, refused = await _preamble(request, fmt, jurisdiction_id)
    if refused:
        return refused
    s = catalog.SERVICES.get(service_code)
    if s is None:
        return formats.error(f, 404, f"service_code {service_code[:60]!r} not found")
    return formats.render(f, "service_definition", catalog.definition(s))


_VIEW_SQL = """
    SELECT i.id, i.state, i.category, i.qualification, i.description, i.lat, i.lon,
           i.opened_at, i.updated_at, c.deadline, o.media_url,
           coalesce(g.name, '') AS place
    FROM incidents i
    LEFT JOIN open311_requests o ON o.incident_id = i.id
    LEFT JOIN sla_clocks c ON c.incident_id = i.id AND c.stage = 'resolve'
    LEFT JOIN grids g ON g.id = i.grid_id
    WHERE i.source = 'open311' AND """


def _views(request: Request, town: _TownInfo, rows: list[Any], locale: str | None
           ) -> list[dict[str, Any]]:
    lang = pick_lang(locale, request.headers.get("accept-language"))
    return [request_view(r, catalog.SERVICES[r["category"]].name
                         if r["category"] in catalog.SERVICES else r["category"],
                         town.departments, lang) for r in rows]


def _date(value: str) -> datetime:
    d = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


@router.get("/requests.{fmt}", response_model=None)
async def list_requests(request: Request, fmt: Fmt, jurisdiction_id: str | None = None,
                        service_request_id: str | None = None,
                        service_code: str | None = None, start_date: str | None = None,
                        end_date: str | None = None, status: str | None = None,
                        locale: str | None = None) -> Response:
    f, refused = await _preamble(request, fmt, jurisdiction_id)
    if refused:
        return refused
    clauses: list[str] = []
    args: list[Any] = []
    if service_request_id:  # the specification: it overrides every other filter
        try:
            ids = [int(x) for x in service_request_id.split(",")[:MAX_LIST]]
        except ValueError:
            return formats.error(f, 400, "service_request_id must be comma-separated ids")
        args.append([i for i in ids if 0 <= i <= BIGINT_MAX])
        clauses.append("i.id = ANY($1)")
    else:
        if service_code:
            args.append(service_code.split(",")[:100])
            clauses.append(f"i.category = ANY(${len(args)})")
        try:
            start = _date(start_date) if start_date else None
            end = _date(end_date) if end_date else None
        except ValueError:
            return formats.error(f, 400, "start_date and end_date must be w3c date-times, "
                                 "e.g. 2026-01-01T00:00:00Z")
        if end is None:
            end = (start + MAX_RANGE) if start else datetime.now(UTC)
        if start is None:
            start = end - MAX_RANGE
        if end < start or end - start > MAX_RANGE:
            return formats.error(f, 400, "start_date to end_date must be a range of at most "
                                 "90 days, start before end")
        args += [start, end]
        clauses.append(f"i.opened_at BETWEEN ${len(args) - 1} AND ${len(args)}")
        if status:
            wanted = {s.strip() for s in status.split(",")}
            if not wanted <= {"open", "closed"}:
                return formats.error(f, 400, "status is open and/or closed")
            if wanted == {"open"}:
                clauses.append("i.state NOT IN ('closed','evaluated','archived','cancelled')")
            elif wanted == {"closed"}:
                clauses.append("i.state IN ('closed','evaluated','archived','cancelled')")
    town = await _town(request)
    rows = await get_hub(request).pool.fetch(
        _VIEW_SQL + " AND ".join(clauses) + f" ORDER BY i.id DESC LIMIT {MAX_LIST}", *args)
    return formats.render(f, "service_requests", _views(request, town, rows, locale))


@router.get("/requests/{request_id}.{fmt}", response_model=None)
async def get_request(request: Request, request_id: str, fmt: Fmt,
                      jurisdiction_id: str | None = None, locale: str | None = None
                      ) -> Response:
    f, refused = await _preamble(request, fmt, jurisdiction_id)
    if refused:
        return refused
    # ASCII digits only ("¹".isdigit() is true, and int() refuses it), and within bigint.
    if not (request_id.isascii() and request_id.isdigit()) or int(request_id) > BIGINT_MAX:
        return formats.error(f, 404, f"service_request_id {request_id[:30]!r} not found")
    town = await _town(request)
    rows = await get_hub(request).pool.fetch(_VIEW_SQL + "i.id = $1", int(request_id))
    if not rows:
        return formats.error(f, 404, f"service_request_id {request_id} not found")
    return formats.render(f, "service_requests", _views(request, town, rows, locale))


# ---------------------------------------------------------------- filing
async def _form(request: Request) -> list[tuple[str, str]] | tuple[int, str]:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        return 415, "send the fields as application/x-www-form-urlencoded"
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return 413, f"a report is at most {MAX_BODY_BYTES} bytes"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return 400, "the form is not valid UTF-8"
    return parse_qsl(text, keep_blank_values=False, max_num_fields=200)


def _location(form: dict[str, str], town: _TownInfo) -> tuple[float, float, str | None, str]:
    """(lon, lat, grid hint, place text); raises InvalidInput with the client's message."""
    address = form.get("address_string", "").strip()[:MAX_ADDRESS]
    if "lat" in form or "long" in form:
        try:
            lat, lon = float(form["lat"]), float(form["long"])
        except (KeyError, ValueError):
            raise InvalidInput("lat and long go together, as WGS-84 decimal degrees") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise InvalidInput("lat/long out of range")
        if town.bbox is not None:
            x0, y0, x1, y1 = town.bbox
            if not (x0 <= lon <= x1 and y0 <= lat <= y1):
                raise InvalidInput(f"lat/long ({lat}, {lon}) is outside {town.name}")
        return lon, lat, None, address
    if not address:
        raise InvalidInput("location not provided: give lat and long, or address_string")
    try:
        found = town.gazetteer.resolve(address)
    except gazetteer.AddressError as e:
        raise InvalidInput(str(e)) from None
    return found.lon, found.lat, found.grid_hint, found.matched


@router.post("/requests.{fmt}", status_code=201, response_model=None,
             openapi_extra=REPORT_FORM)
async def create_request(request: Request, fmt: Fmt) -> Response:
    f, refused = await _preamble(request, fmt, None)
    if refused:
        return refused
    pairs = await _form(request)
    if isinstance(pairs, tuple):
        return formats.error(f, *pairs)
    form: dict[str, str] = {}
    attrs: dict[str, list[str]] = {}
    for k, v in pairs:
        if m := _ATTR.match(k):
            attrs.setdefault(m.group(1), []).append(v)
        else:
            form.setdefault(k, v)
    key = form.get("api_key", "")
    if not key:
        return formats.error(f, 403, "api_key was not provided")
    hub = get_hub(request)
    app = await open311_keys.check(hub.pool, key)
    if app is None:
        return formats.error(f, 403, "invalid api_key received -- can't proceed with "
                             "create_request")
    wait = _state(request).per_key.take(app.key_id, time.monotonic())
    if wait > 0:
        return formats.error(f, 429, "this application's report allowance is used up",
                             {"Retry-After": str(max(1, round(wait)))})
    town = await _town(request)
    jid = form.get("jurisdiction_id")
    if jid is not None and jid != town.jurisdiction_id:
        return formats.error(f, 404, f"jurisdiction_id {jid[:60]!r} not found; this "
                             f"endpoint serves {town.jurisdiction_id!r}")
    code = form.get("service_code", "")
    if not code:
        return formats.error(f, 400, "service_code was not provided; see services." + f)
    service = catalog.SERVICES.get(code)
    if service is None:
        return formats.error(f, 404, f"service_code {code[:60]!r} not found")
    try:
        answers, priority, lines = catalog.check_attributes(service, attrs)
        lon, lat, grid_hint, place = _location(form, town)
        who = contacts.pick(form)
    except (catalog.BadAttributes, InvalidInput) as e:
        return formats.error(f, 400, getattr(e, "message", None) or str(e))
    media = form.get("media_url", "").strip()
    if media and (len(media) > MAX_MEDIA_URL
                  or urlparse(media).scheme not in ("http", "https")
                  or not urlparse(media).netloc):
        return formats.error(f, 400, "media_url must be an http(s) URL")
    description = form.get("description", "").strip()
    if len(description) > MAX_DESCRIPTION:
        return formats.error(f, 400, f"description longer than {MAX_DESCRIPTION} characters")
    text = "\n".join(x for x in (description, *lines,
                                 f"【地址】{form['address_string'].strip()[:MAX_ADDRESS]}"
                                 if form.get("address_string", "").strip() else "") if x)
    view = await dispatch_service.open_incident(
        hub.pool, category=code, qualification=service.qualification, priority=priority,
        title=f"市民报告：{service.name}" + (f"（{place}）" if place else ""),
        description=text, lon=lon, lat=lat, source="open311",
        reporter=f"open311:{app.app_name}", grid_id=grid_hint)
    async with hub.pool.acquire() as conn, conn.transaction():
        cid = await contacts.store(conn, who, datetime.now(UTC),
                                   hub.settings.retention_contacts_days)
        await conn.execute(
            """INSERT INTO open311_requests (incident_id, key_id, channel, contact_id,
                                             address_string, media_url, attributes)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            view["id"], app.key_id, app.app_name, cid,
            form.get("address_string", "").strip()[:MAX_ADDRESS] or None, media or None,
            answers)
    lang = pick_lang(form.get("locale"), request.headers.get("accept-language"))
    notice = ("已受理，等待指挥中心核实立案" if lang == "zh_CN"
              else "Received; the command center will verify and register it.")
    return formats.render(f, "service_requests", [
        {"service_request_id": str(view["id"]), "service_notice": notice,
         "account_id": None}], 201)
