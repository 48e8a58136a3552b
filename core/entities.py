"""The columns of the entity views (alarm, incident, unit) that events, the API and the live
feed all carry, so a client sees one shape for an entity wherever it reads it. Each is a
SELECT list over its table's usual alias (a, i, u); rows become dicts via core.db.row_view.
"""

from __future__ import annotations

ALARM_COLUMNS = """a.id, a.rule_id, a.device_id, a.grid_id, a.severity, a.state, a.value,
    a.message, a.raised_at, a.last_seen, a.count, a.acked_by, a.acked_at, a.cleared_at,
    a.cleared_by, a.clear_reason, a.incident_id, a.flapping, a.situation, a.members"""

INCIDENT_COLUMNS = """i.id, i.category, i.priority, i.qualification, i.title, i.description,
    i.lon, i.lat, i.grid_id, i.source, i.reporter, i.state, i.opened_at, i.updated_at,
    i.assigned_unit, i.rework_count, i.extension_count, i.handler, i.alarms_cleared, i.sla"""

UNIT_COLUMNS = """u.id, u.name, u.type, u.qualifications, u.home_grid, u.members, u.status,
    u.duty_since, u.current_incident, u.lon, u.lat, u.speed, u.heading, u.position_ts"""
