"""What a citizen sees of a case through Open311 (pure): the request document, its status
notes in the citizen's language, the department responsible, the language picked from
``locale`` / ``Accept-Language``.

Only case facts appear: never a contact (hub/contacts.py), the reporter or the handler.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

LANGS = ("zh_CN", "en")
DEFAULT_LANG = "zh_CN"
CLOSED_STATES = frozenset({"closed", "evaluated", "archived", "cancelled"})

# Case state -> what the citizen is told, per language.
STATUS_NOTES: dict[str, tuple[str, str]] = {
    "reported": ("已受理，等待指挥中心核实立案", "Received; the command center is verifying it."),
    "registered": ("已核实立案，正在安排处置力量",
                   "Verified and registered; a team is being assigned."),
    "dispatched": ("已派遣处置力量", "A team has been dispatched."),
    "accepted": ("处置力量已签收，正在前往现场", "The team has accepted and is on its way."),
    "handling": ("正在现场处置", "Being handled on site."),
    "feedback": ("处置完毕，等待核查", "Work done; awaiting verification."),
    "verified": ("已核查，即将结案", "Verified; about to be closed."),
    "closed": ("已办结", "Resolved and closed."),
    "evaluated": ("已办结", "Resolved and closed."),
    "archived": ("已办结", "Resolved and closed."),
    "shelved": ("暂缓处置，条件具备后继续办理",
                "On hold; it will be handled when conditions allow."),
    "cancelled": ("经核实不予立案，已撤销", "Not registered after verification; cancelled."),
}
# Department names for English readers (the town data names them in Chinese).
DEPARTMENTS_EN = {
    "city_management": "City Management", "work_safety": "Work Safety",
    "environment": "Environmental Protection", "traffic": "Traffic",
    "public_security": "Public Security", "fire": "Fire and Rescue", "water": "Water Affairs",
    "health": "Health", "education": "Education", "culture": "Culture",
    "market_supervision": "Market Supervision", "housing_construction": "Housing and Construction",
}


def pick_lang(locale: str | None, accept_language: str | None) -> str:
    """``locale`` (zh_CN, zh-CN, en, en_US ...) first, then the best of Accept-Language."""
    def of(tag: str) -> str | None:
        t = tag.strip().lower().replace("_", "-")
        return "en" if t.startswith("en") else "zh_CN" if t.startswith("zh") else None

    if locale and (lang := of(locale)):
        return lang
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if (lang := of(tag)) and q > 0:
            ranked.append((-q, i, lang))
    return min(ranked)[2] if ranked else DEFAULT_LANG


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def department(qualification: str, departments: dict[str, str], lang: str) -> str | None:
    if lang == "en":
        return DEPARTMENTS_EN.get(qualification) or departments.get(qualification)
    return departments.get(qualification) or DEPARTMENTS_EN.get(qualification)


def request_view(r: Any, service_name: str, departments: dict[str, str], lang: str
                 ) -> dict[str, Any]:
    """``r``: the incident's id, state, category, qualification, description, lat, lon,
    opened_at, updated_at, the resolve-stage SLA ``deadline``, ``place`` and ``media_url``."""
    notes = STATUS_NOTES.get(r["state"], (r["state"], r["state"]))
    closed = r["state"] in CLOSED_STATES
    return {
        "service_request_id": str(r["id"]),
        "status": "closed" if closed else "open",
        "status_notes": notes[0] if lang == "zh_CN" else notes[1],
        "service_name": service_name,
        "service_code": r["category"],
        "description": r["description"],
        "agency_responsible": department(r["qualification"], departments, lang),
        "service_notice": None,
        "requested_datetime": iso(r["opened_at"]),
        "updated_datetime": iso(r["updated_at"]),
        "expected_datetime": None if closed else iso(r["deadline"]),
        "address": r["place"],
        "address_id": None,
        "zipcode": None,
        "lat": r["lat"],
        "long": r["lon"],
        "media_url": r["media_url"],
    }
