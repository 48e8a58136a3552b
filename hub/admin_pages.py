"""The administration pages (server-rendered shells; their scripts call the admin APIs:
hub/admin_devices.py, hub/admin_units.py, hub/admin_users.py, and the rules and SLA APIs)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from core.town_format import DEPARTMENTS
from hub.views import page

router = APIRouter(prefix="/admin")


@router.get("/devices", response_class=HTMLResponse)
async def devices_page(request: Request) -> Response:
    return page(request, "admin_devices.html")


@router.get("/units", response_class=HTMLResponse)
async def units_page(request: Request) -> Response:
    return page(request, "admin_units.html", departments=list(DEPARTMENTS))


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request) -> Response:
    return page(request, "admin_users.html")


@router.get("/rules", response_class=HTMLResponse)
async def rules_page(request: Request) -> Response:
    return page(request, "admin_rules.html")


@router.get("/sla", response_class=HTMLResponse)
async def sla_page(request: Request) -> Response:
    return page(request, "admin_sla.html")


@router.get("/grids", response_class=HTMLResponse)
async def grids_page(request: Request) -> Response:
    return page(request, "admin_grids.html")
