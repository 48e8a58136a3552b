"""Server-rendered pages (Jinja2) and the vendored front-end libraries.

Front-end libraries come from Python packages (XStatic) installed by the set-up, never from
a CDN: command centres are often offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xstatic.pkg.leaflet as xleaflet
from fastapi import APIRouter, FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(
    directory=Path(__file__).resolve().parent.parent / "frontend" / "templates")

router = APIRouter()


def mount_vendor(app: FastAPI) -> None:
    app.mount("/vendor/leaflet", StaticFiles(directory=xleaflet.BASE_DIR), name="leaflet")


@router.get("/", response_class=HTMLResponse)
async def console(request: Request) -> Any:
    hub = request.app.state.hub
    return TEMPLATES.TemplateResponse(request, "console.html", {
        "tile_url": hub.settings.map_tile_url,
        "town_name": "徐霞客镇",
    })


@router.websocket("/ws/live")
async def live(ws: WebSocket) -> None:
    await ws.app.state.hub.feed.serve(ws)
