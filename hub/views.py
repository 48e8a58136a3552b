"""Server-rendered pages (Jinja2, translated with gettext catalogs) and the vendored
front-end libraries.

Front-end libraries come from Python packages (XStatic) installed by the set-up, never from
a CDN: command centres are often offline. Every page gets ``lang`` (zh_CN by default, see
``hub/i18n.py``), the language menu and the map tile URL; the data comes from the API and
the live feed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import xstatic.pkg.leaflet as xleaflet
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from hub import audit, i18n
from hub.access import principal_of
from hub.params import RowId
from hub.state import get_hub

TEMPLATES = Jinja2Templates(
    directory=Path(__file__).resolve().parent.parent / "frontend" / "templates")
i18n.install(TEMPLATES.env)

router = APIRouter()

# Rows on the audit page; older events are found by narrowing the filter (or the API).
AUDIT_PAGE_ROWS = 500

# The language choice is remembered for a year: a console stays on its language.
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600


NODE_MODULES = Path(__file__).resolve().parent.parent / "frontend" / "node_modules"


def mount_vendor(app: FastAPI) -> None:
    app.mount("/vendor/leaflet", StaticFiles(directory=xleaflet.BASE_DIR), name="leaflet")
    # Installed by the set-up from frontend/package-lock.json (npm ci).
    uplot = NODE_MODULES / "uplot" / "dist"
    if uplot.is_dir():
        app.mount("/vendor/uplot", StaticFiles(directory=uplot), name="uplot")


def page(request: Request, template: str, **context: Any) -> Response:
    """Render a page in the request's language (and remember an explicit ?lang=)."""
    query = request.query_params.get("lang")
    lang = i18n.pick_language(query, request.cookies.get("lang"))
    hub = get_hub(request)
    principal = principal_of(request)
    response = TEMPLATES.TemplateResponse(request, template, {
        # The session's CSRF token, for the scripts' state-changing requests (api.js) and
        # the logout form; the signed-in user for the header.
        "csrf_token": principal.csrf_token if principal and principal.csrf_token else "",
        "user": principal,
        "lang": lang,
        "html_lang": i18n.HTML_LANG[lang],
        "languages": i18n.LANGUAGES,
        "tile_url": hub.settings.map_tile_url,
        "town_name": "徐霞客镇" if lang == "zh_CN" else "Xuxiake Town",
        **context,
    })
    if query in i18n.LANGUAGES:
        response.set_cookie("lang", lang, max_age=LANG_COOKIE_MAX_AGE, samesite="lax",
                            httponly=True)
    return response


@router.get("/", response_class=HTMLResponse)
async def console(request: Request) -> Response:
    return page(request, "console.html")


@router.get("/cases/{incident_id}", response_class=HTMLResponse)
async def case_page(request: Request, incident_id: RowId) -> Response:
    return page(request, "case.html", incident_id=incident_id)


@router.get("/units/{unit_id}", response_class=HTMLResponse)
async def unit_page(request: Request, unit_id: str) -> Response:
    """Track playback; ``?also=U2,U3`` puts several units on one timeline."""
    also = [u for u in request.query_params.get("also", "").split(",") if u][:20]
    return page(request, "unit.html", unit_ids=[unit_id, *also])


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_page(request: Request, device_id: str) -> Response:
    return page(request, "device.html", device_id=device_id)


@router.get("/reports", response_class=HTMLResponse)
async def reports_page(request: Request) -> Response:
    return page(request, "reports.html")


@router.get("/inspections", response_class=HTMLResponse)
async def inspections_page(request: Request) -> Response:
    return page(request, "inspections.html")


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request) -> Response:
    """The security audit trail (supervisors and admins), filtered by ``kind``, ``actor``
    and ``target`` as ``GET /api/audit`` is; newest first, one page."""
    q = request.query_params
    filters = {k: (q.get(k) or "").strip()[:128] or None for k in ("kind", "actor", "target")}
    if filters["kind"] not in audit.KINDS:
        filters["kind"] = None
    events = await audit.query(get_hub(request).pool, limit=AUDIT_PAGE_ROWS,
                               kind=filters["kind"], actor=filters["actor"],
                               target=filters["target"])
    for e in events:
        e["at_text"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        e["detail_text"] = ", ".join(f"{k}={v}" for k, v in sorted(e["detail"].items()))
    return page(request, "audit.html", events=events, kinds=sorted(audit.KINDS),
                filters=filters)


@router.websocket("/ws/live")
async def live(ws: WebSocket) -> None:
    await ws.app.state.hub.feed.serve(ws)
