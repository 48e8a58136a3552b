"""Alarm rules through the API: list, edit (validated by the pure rules module), disable,
backtest a rule (stored or new) over a stored time range without raising anything (in a
child process, ingest/backtest_job.py; cancellable), and the members of a grouped alarm."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core import clock, outbox
from core.db import row_view
from core.errors import InvalidInput, NotFound
from core.events import RuleChanged
from hub import audit
from hub.access import actor_of
from hub.params import UNIX_MAX, RowId
from hub.state import Hub, HubDep, get_hub
from ingest import alarms, rules
from ingest.backtest_job import Backtests
from ingest.subjects import parse_hours

router = APIRouter(prefix="/api/rules")

# Longer ranges are for the rollups, not for re-running rules. (The row and time caps are
# settings: backtest_max_rows, backtest_max_s.)
BACKTEST_MAX_RANGE_S = 31 * 86400

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class RuleBody(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Annotated[str, Field(pattern="^(threshold|duration|rate|nodata|geofence)$")]
    metric: Annotated[str | None, Field(max_length=64)] = None
    device_model: Annotated[str | None, Field(max_length=64)] = None
    params: dict[str, Any] = Field(default_factory=dict)
    severity: Annotated[str, Field(pattern="^(critical|major|minor|warning)$")] = "major"
    incident_category: Annotated[str | None, Field(max_length=64)] = None
    qualification: Annotated[str | None, Field(max_length=64)] = None
    priority: Annotated[int, Field(ge=1, le=4)] = 3
    source: Annotated[str, Field(max_length=500)] = ""
    device_filter: dict[str, str] = Field(default_factory=dict)
    hours: Annotated[str | None, Field(pattern=r"^\d{1,2}:\d{2}-\d{1,2}:\d{2}$")] = None
    applies_to: Annotated[str, Field(pattern="^(devices|units)$")] = "devices"
    enabled: bool = True

    def to_rule(self, rule_id: str) -> rules.Rule:
        rule = rules.Rule(id=rule_id, name=self.name, kind=self.kind, metric=self.metric,
                          device_model=self.device_model, params=self.params,
                          severity=self.severity, incident_category=self.incident_category,
                          qualification=self.qualification, priority=self.priority)
        try:
            rules.validate(rule)
            parse_hours(self.hours)
        except (rules.RuleError, ValueError) as e:
            raise InvalidInput(str(e), code="rule.invalid") from e
        if self.incident_category and not self.qualification:
            raise InvalidInput("a rule that opens cases needs the qualification they need",
                               code="rule.invalid")
        return rule


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.get("")
async def list_rules(request: Request, hub: HubDep) -> list[dict[str, Any]]:
    rows = await hub.pool.fetch(
        """SELECT r.*, (SELECT count(*) FROM alarms a WHERE a.rule_id = r.id
                        AND a.state <> 'cleared') AS open_alarms
           FROM rules r ORDER BY r.id""")
    return [row_view(r) for r in rows]


@router.get("/alarm-groups/{alarm_id}")
async def alarm_group(request: Request, hub: HubDep,
                      alarm_id: RowId, all: bool = False) -> dict[str, Any]:
    """A grouped alarm (storm situation or capped rule) with its members: every device in
    it, open ones only unless ``all``."""
    pool = hub.pool
    row = await pool.fetchrow("SELECT * FROM alarms WHERE id = $1", alarm_id)
    if row is None:
        raise NotFound(f"alarm {alarm_id} not found", code="alarm.not_found")
    return {"alarm": row_view(row),
            "members": await alarms.group_members(pool, alarm_id, include_cleared=all)}


@router.get("/{rule_id}")
async def get_rule(request: Request, hub: HubDep, rule_id: str) -> dict[str, Any]:
    row = await hub.pool.fetchrow("SELECT * FROM rules WHERE id = $1", rule_id)
    if row is None:
        raise NotFound(f"rule {rule_id} not found", code="rule.not_found")
    return row_view(row)


async def _reload(hub: Hub) -> None:
    """This process applies the change at once (to its evaluator too, when it leads); other
    hub processes with an ingest role on the change's ``rule.changed`` event
    (hub/config_reload.py), a lone ``python -m ingest`` within its registry reload interval
    (ingest/service.py)."""
    if hub.ingest is not None and hub.ingest.pipeline is not None:
        await hub.ingest.reload(reconcile=True)


@router.put("/{rule_id}")
async def put_rule(request: Request, hub: HubDep, rule_id: Id, body: RuleBody) -> dict[str, Any]:
    """Create or replace a rule. A changed rule starts with fresh state."""
    body.to_rule(rule_id)
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """INSERT INTO rules (id, name, kind, metric, device_model, params, severity,
                                  incident_category, qualification, priority, source,
                                  device_filter, hours, applies_to, enabled, updated_by)
               VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16)
               ON CONFLICT (id) DO UPDATE SET name=excluded.name, kind=excluded.kind,
                 metric=excluded.metric, device_model=excluded.device_model, params=excluded.params,
                 severity=excluded.severity, incident_category=excluded.incident_category,
                 qualification=excluded.qualification, priority=excluded.priority,
                 source=excluded.source, device_filter=excluded.device_filter,
                 hours=excluded.hours, applies_to=excluded.applies_to, enabled=excluded.enabled,
                 updated_by=excluded.updated_by, updated_at=now()
               RETURNING *""",
            rule_id, body.name, body.kind, body.metric, body.device_model, body.params,
            body.severity, body.incident_category, body.qualification, body.priority, body.source,
            body.device_filter, body.hours, body.applies_to, body.enabled, actor)
        await audit.record(conn, "rule.changed", actor, target=rule_id,
                           client_ip=_client_ip(request), detail=body.model_dump())
        await outbox.record(conn, RuleChanged(rule=row_view(row)))
    await _reload(hub)
    return row_view(row)


@router.delete("/{rule_id}")
async def disable_rule(request: Request, hub: HubDep, rule_id: str) -> dict[str, Any]:
    """Rules are disabled, not deleted: their alarms keep pointing at them."""
    actor = actor_of(request)
    async with hub.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE rules SET enabled = false, updated_at = now(), updated_by = $2 "
            "WHERE id = $1 RETURNING *", rule_id, actor)
        if row is None:
            raise NotFound(f"rule {rule_id} not found", code="rule.not_found")
        await audit.record(conn, "rule.disabled", actor, target=rule_id,
                           client_ip=_client_ip(request))
        await outbox.record(conn, RuleChanged(rule=row_view(row)))
    await _reload(hub)
    return row_view(row)


class BacktestBody(BaseModel):
    rule_id: Id | None = None
    rule: RuleBody | None = None
    since: Annotated[float, Field(ge=0, le=UNIX_MAX)]
    until: Annotated[float | None, Field(ge=0, le=UNIX_MAX)] = None
    device_ids: Annotated[list[Id], Field(max_length=1000)] = Field(default_factory=list)
    # Name the run to be able to cancel it (DELETE /api/rules/backtest/{job_id}).
    job_id: Id | None = None


def _backtests(request: Request) -> Backtests:
    state = request.app.state
    jobs: Backtests | None = getattr(state, "backtests", None)
    if jobs is None:
        s = get_hub(request).settings
        jobs = state.backtests = Backtests(s.database_url, s.backtest_max_rows,
                                           s.backtest_max_s, s.backtest_max_running,
                                           s.backtest_cpu_share)
    return jobs


@router.post("/backtest")
async def backtest(request: Request, hub: HubDep, body: BacktestBody) -> dict[str, Any]:
    """The alarms a rule (stored, or given inline) would have raised over a stored range.
    Runs in a child process with row and time caps; the hub's loop only waits."""
    pool = hub.pool
    if body.rule is not None:
        rule = body.rule.to_rule(body.rule_id or "backtest")
        model_filter = body.rule.device_model
    elif body.rule_id is not None:
        row = await pool.fetchrow("SELECT * FROM rules WHERE id = $1", body.rule_id)
        if row is None:
            raise NotFound(f"rule {body.rule_id} not found", code="rule.not_found")
        rule = rules.Rule.from_row(dict(row))
        model_filter = row["device_model"]
    else:
        raise InvalidInput("give rule_id or rule", code="backtest.no_rule")
    until = body.until if body.until is not None else clock.now()
    if not 0 < until - body.since <= BACKTEST_MAX_RANGE_S:
        raise InvalidInput("range must be positive and at most 31 days",
                           code="backtest.bad_range")
    if rule.kind == "geofence":
        raise InvalidInput("geofence rules are judged on unit tracks, not telemetry",
                           code="backtest.unsupported")
    job_id = body.job_id or uuid.uuid4().hex
    result = await _backtests(request).run(job_id, rule, body.since, until, model_filter,
                                           body.device_ids)
    episodes = result["episodes"]
    # What the backtest cost the machine rides along: the child's and its PostgreSQL
    # backend's CPU, and whether that backend could be lowered (ingest/backtest_job.py).
    return {"rule_id": rule.id, "job_id": job_id, "readings": result["readings"],
            "alarms": len(episodes), "episodes": episodes, "queries": result["queries"],
            "backend_lowered": result["backend_lowered"], "cpu_s": result["cpu_s"]}


@router.get("/backtest/{job_id}")
async def backtest_progress(request: Request, job_id: Id) -> dict[str, Any]:
    """How far a running backtest has got (it reads at a bounded CPU share, so a long one
    takes a while): readings so far, devices done of devices, seconds elapsed of ``max_s``."""
    progress = _backtests(request).progress.get(job_id)
    if progress is None:
        raise NotFound(f"no backtest {job_id} is running", code="backtest.not_running")
    return {"job_id": job_id, **progress}


@router.delete("/backtest/{job_id}")
async def cancel_backtest(request: Request, job_id: Id) -> dict[str, Any]:
    """Stop a running backtest (its request answers 409 backtest.cancelled)."""
    if not _backtests(request).cancel(job_id):
        raise NotFound(f"no backtest {job_id} is running", code="backtest.not_running")
    return {"job_id": job_id, "cancelled": True}
