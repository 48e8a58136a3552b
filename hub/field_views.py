"""The field app's page shell, its service worker and its web app manifest.

All three are public: the page holds no data (it reads the API with the phone's own
token, kept on the phone) and must load from the service worker's cache with no network.
The service worker is served from ``/field/sw.js`` and allowed the ``/field`` scope
(``Service-Worker-Allowed``), so it controls the page at ``/field`` itself.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from hub import i18n
from hub.views import page

router = APIRouter()

STATIC = Path(__file__).resolve().parent.parent / "frontend" / "static"
SW_SCOPE = "/field"


@router.get("/field", response_class=HTMLResponse)
async def field_page(request: Request) -> Response:
    response = page(request, "field.html")
    # The shell is cached by the service worker; the network copy is always preferred.
    response.headers["Cache-Control"] = "no-cache"
    return response


@router.get("/field/sw.js")
async def service_worker() -> Response:
    return FileResponse(STATIC / "field_sw.js", media_type="text/javascript",
                        headers={"Service-Worker-Allowed": SW_SCOPE,
                                 "Cache-Control": "no-cache"})


@router.get("/field/manifest.webmanifest")
async def manifest(request: Request) -> Response:
    lang = i18n.pick_language(request.query_params.get("lang"), request.cookies.get("lang"))
    name = i18n.gettext_for(lang, "Field app")
    return JSONResponse({
        "name": name, "short_name": name, "lang": i18n.HTML_LANG[lang],
        "start_url": "/field", "scope": "/field", "display": "standalone",
        "orientation": "portrait", "background_color": "#ffffff", "theme_color": "#0b3d91",
        "icons": [{"src": "/static/field_icon.svg", "sizes": "any", "type": "image/svg+xml"}],
    }, media_type="application/manifest+json")
