"""An SLA edit put in force in its own transaction: logged, loaded, open cases retimed,
published.

Every edit of the SLA configuration (dispatch/sla_edits.py, dispatch/sla_days.py) ends with
``record_edit`` inside its transaction: the change log row with the actor, the new
configuration loaded into this process (``sla_settings.load`` on the transaction's
connection, so it sees the edit), every open case's running clocks recomputed with it, one
``incident.updated`` per such case (action ``SLA_RETIMED``: consoles redraw the countdowns,
the dispatcher's SLA timer schedules the new deadlines) and one ``sla.config_changed``
(every other process reloads the configuration, hub/config_reload.py). All or nothing: if
the transaction fails, the caller reloads the configuration as committed.

A case step that runs in another process at the same time waits for the case's row lock
taken here and then computes its clocks with the configuration that process holds, which
is the new one as soon as that process has seen ``sla.config_changed`` (normally within
milliseconds of commit; at worst ``HUB_SLA_RELOAD_S``).
"""

from __future__ import annotations

from typing import Any

from core import clock, outbox
from core.db import Conn, row_view
from core.events import IncidentUpdated, SlaConfigChanged
from dispatch import sla_clocks, sla_settings, store
from dispatch.sla_config import InForce

# The workflow "action" of a case whose clocks moved because the configuration did (not a
# case step: nothing is appended to its case log).
SLA_RETIMED = "sla_retimed"


async def record_edit(conn: Conn, actor: str, target: str, before: Any, after: Any,
                      now: float | None = None) -> int:
    """Log the edit, put the configuration as it now stands in the database in force in
    this process, retime the open cases and record the events. Returns the number of cases
    retimed. Call inside the edit's transaction, after its writes."""
    at = clock.now() if now is None else now
    await sla_settings.log_change(conn, actor, target, before, after)
    await sla_settings.load(conn, sla_file=InForce.sla_file, calendar_file=InForce.calendar_file,
                            tz=InForce.tz, scale=InForce.scale, now=at)
    retimed = await retime_open_cases(conn, at)
    await outbox.record(conn, SlaConfigChanged(target=target, before=before, after=after,
                                               retimed=len(retimed)))
    return len(retimed)


async def retime_open_cases(conn: Conn, now: float) -> list[int]:
    """Recompute, with the configuration in force, the clocks of every case with a running
    clock (a deadline, not met: paused and stopped cases have none and are recomputed at
    their next step anyway), under their row locks, and record their ``incident.updated``.
    Returns their ids."""
    rows = await conn.fetch(
        "SELECT DISTINCT incident_id FROM sla_clocks WHERE met_at IS NULL "
        "AND deadline IS NOT NULL ORDER BY incident_id")
    ids = [int(r["incident_id"]) for r in rows]
    if not ids:
        return []
    # Row locks in id order, as a case step takes its one: a step of one of these cases
    # waits for this transaction and reads the clocks written here.
    locked = await conn.fetch(
        "SELECT id FROM incidents WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", ids)
    ids = [int(r["id"]) for r in locked]
    reads = await store.step_reads(conn, ids)
    events = []
    for iid in ids:
        inc = await store.incident_row(conn, iid)
        assert inc is not None  # locked above
        case, _head, prev_rows = reads[iid]
        await sla_clocks.update_clocks(conn, inc, case, SLA_RETIMED, now, prev_rows)
        events.append(IncidentUpdated(incident=row_view(inc), action=SLA_RETIMED))
    await outbox.record_many(conn, events)
    return ids
