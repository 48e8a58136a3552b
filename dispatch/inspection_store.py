"""Double-random inspections I/O shell: commitments, draws, results and publication.

Reads the registries, calls the pure draw (dispatch/inspections.py), writes commitments,
draws and results. Every function takes the time as ``now`` (UNIX seconds) and the acting
principal's name from its caller (hub/inspections_api.py takes it from the login, never
from a request body). Errors are ``core.errors`` types with stable codes.

The life of a draw (dispatch/inspections.py, "Committed seeds"):

1. ``commit``: a supervisor announces a draw (matter, targets, team size, weighting); the
   hub generates a secret and publishes its SHA-256 at once (``public_commitments``).
2. ``make_draw``: later, an operator draws with that commitment: the registries as they
   are then, and a seed derived from the secret and the inputs. One attempt per
   commitment: a failed one uses it up too, on the public record.
3. ``record_result``: what each inspection found, once per drawn entity.
4. ``publish_draw``: a supervisor publishes the draw (revealing the secret) and the
   results recorded so far; publishing again publishes later results.

Only published things reach the public views (``public_draws``, ``public_draw``); the
commitments are public from the start, since announcing them is their purpose.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from core.clock import to_datetime
from core.db import Conn, Querier, row_view
from core.errors import Conflict, InvalidInput, NotFound
from dispatch import inspections

OUTCOMES: tuple[str, ...] = ("no_problem", "rectification_ordered", "case_filed",
                             "not_found", "refused")
OUTCOME_LABELS = {"no_problem": "未发现问题", "rectification_ordered": "发现问题已责令整改",
                  "case_filed": "发现问题已立案查处", "not_found": "未找到该主体",
                  "refused": "不配合检查"}



@asynccontextmanager
async def _transaction(db: Querier) -> AsyncIterator[Conn]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db


async def list_matters(db: Querier) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT id, name, department, description, industries "
                          "FROM inspection_matters ORDER BY id")
    return [dict(r) for r in rows]


async def _matter(db: Querier, matter_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT id, name, department, industries FROM inspection_matters "
                            "WHERE id = $1", matter_id)
    if row is None:
        raise NotFound(f"no inspection matter {matter_id}", code="inspection.matter_not_found")
    return row


async def _pools(db: Querier, matter: asyncpg.Record) -> tuple[
        list[inspections.Inspector], list[inspections.Entity], list[tuple[str, str]]]:
    ins = await db.fetch("SELECT id, department FROM inspectors WHERE active AND department = $1",
                         matter["department"])
    ents = await db.fetch(
        "SELECT id, risk_class FROM market_entities WHERE active "
        "AND (cardinality($1::text[]) = 0 OR industry = ANY($1::text[]))",
        list(matter["industries"]))
    conflicts = await db.fetch("SELECT inspector_id, entity_id FROM inspector_conflicts")
    return ([inspections.Inspector(r["id"], r["department"]) for r in ins],
            [inspections.Entity(r["id"], r["risk_class"]) for r in ents],
            [(r["inspector_id"], r["entity_id"]) for r in conflicts])


# ---------------------------------------------------------------- commitments
_COMMITMENT = """c.id, c.matter_id, m.name AS matter_name, m.department, c.targets,
    c.inspectors_per_target, c.risk_weights, c.commitment, c.committed_at, c.committed_by,
    c.failed_at, c.failed_by, c.failure, d.id AS draw_id, d.drawn_at,
    coalesce(d.published, false) AS published"""
_COMMITMENT_FROM = """inspection_commitments c
    JOIN inspection_matters m ON m.id = c.matter_id
    LEFT JOIN inspection_draws d ON d.commitment_id = c.id"""


def _commitment_view(row: asyncpg.Record) -> dict[str, Any]:
    view = row_view(row)
    view["status"] = ("published" if view["published"] else
                      "drawn" if view["draw_id"] is not None else
                      "failed" if view["failed_at"] is not None else "open")
    return view


async def commit(db: Querier, *, matter_id: str, targets: int, by: str, now: float,
                 inspectors_per_target: int = inspections.DEFAULT_INSPECTORS_PER_TARGET,
                 weight_by_risk: bool = True) -> dict[str, Any]:
    """Announce a draw: a fresh secret, its SHA-256 published now with the draw's terms.

    The secret never leaves the database until the draw it seeds is published. Raises
    ``NotFound`` (``inspection.matter_not_found``) or ``DrawError``
    (``inspection.bad_input``) for a team below the minimum or no target.
    """
    if targets < 1 or inspectors_per_target < inspections.MIN_INSPECTORS_PER_TARGET:
        raise inspections.DrawError(
            "inspection.bad_input", "at least one target and a team of at least "
            f"{inspections.MIN_INSPECTORS_PER_TARGET} inspectors")
    secret = secrets.token_hex(inspections.SECRET_BYTES)
    weights = dict(inspections.DEFAULT_RISK_WEIGHTS) if weight_by_risk else None
    async with _transaction(db) as conn:
        await _matter(conn, matter_id)
        cid = await conn.fetchval(
            """INSERT INTO inspection_commitments (matter_id, targets, inspectors_per_target,
                   risk_weights, commitment, secret, committed_at, committed_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
            matter_id, targets, inspectors_per_target, weights,
            inspections.commitment_of(secret), secret, to_datetime(now), by)
        return await get_commitment(conn, int(cid))


async def get_commitment(db: Querier, commitment_id: int) -> dict[str, Any]:
    row = await db.fetchrow(f"SELECT {_COMMITMENT} FROM {_COMMITMENT_FROM} WHERE c.id = $1",
                            commitment_id)
    if row is None:
        raise NotFound(f"no commitment {commitment_id}",
                       code="inspection.commitment_not_found")
    return _commitment_view(row)


async def list_commitments(db: Querier, *, open_only: bool = False, limit: int = 100,
                           before: int | None = None) -> list[dict[str, Any]]:
    """Commitments, newest first, ids below ``before`` if given (staff view: with who made
    them; never the secret)."""
    rows = await db.fetch(
        f"""SELECT {_COMMITMENT} FROM {_COMMITMENT_FROM}
            WHERE (NOT $1 OR (d.id IS NULL AND c.failed_at IS NULL))
              AND ($3::bigint IS NULL OR c.id < $3)
            ORDER BY c.id DESC LIMIT $2""", open_only, limit, before)
    return [_commitment_view(r) for r in rows]


async def public_commitments(db: Querier, *, limit: int = 100,
                             before: int | None = None) -> list[dict[str, Any]]:
    """Every announced commitment, newest first, as the public sees it: the hash, time and
    terms, and whether it has been drawn (or its draw failed, with the error code); the
    draw's id only once it is published."""
    out = []
    for v in await list_commitments(db, limit=limit, before=before):
        out.append({k: v[k] for k in ("id", "matter_id", "matter_name", "department",
                                      "targets", "inspectors_per_target", "risk_weights",
                                      "commitment", "committed_at", "status", "failed_at",
                                      "failure")}
                   | {"draw_id": v["draw_id"] if v["published"] else None})
    return out


def _terms(row: asyncpg.Record) -> inspections.Terms:
    return inspections.Terms(row["matter_id"], int(row["targets"]),
                             int(row["inspectors_per_target"]), row["risk_weights"])


# ---------------------------------------------------------------- draws
async def make_draw(db: Querier, *, commitment_id: int, now: float,
                    drawn_by: str) -> dict[str, Any]:
    """Draw with a commitment, from the registries as they are now; return the draw's view.

    A commitment serves one attempt: a draw that fails uses it up as well (recorded as
    ``failed_*`` with the error code, public), since a failure can tell something about
    the seed those inputs give and the inputs could be changed for another try. Raises
    ``NotFound`` (``inspection.commitment_not_found``), ``Conflict``
    (``inspection.commitment_used``: it has been drawn with already, successfully or not;
    ``inspection.commitment_too_new``: not made strictly before ``now``) or ``DrawError``
    (the failed attempt, recorded).
    """
    failure: inspections.DrawError | None = None
    async with _transaction(db) as conn:
        c = await conn.fetchrow(
            """SELECT c.*, extract(epoch FROM c.committed_at)::float8 AS committed_s
               FROM inspection_commitments c WHERE c.id = $1 FOR UPDATE""", commitment_id)
        if c is None:
            raise NotFound(f"no commitment {commitment_id}",
                           code="inspection.commitment_not_found")
        # Asked only once the row is locked: a draw that raced this one has committed.
        used = await conn.fetchval("SELECT id FROM inspection_draws WHERE commitment_id = $1",
                                   commitment_id)
        if used is not None or c["failed_at"] is not None:
            raise Conflict(f"commitment {commitment_id} has been drawn with already "
                           f"({f'draw {used}' if used is not None else c['failure']})",
                           code="inspection.commitment_used")
        if not c["committed_s"] < now:
            raise Conflict("a commitment is used only after the moment it was made",
                           code="inspection.commitment_too_new")
        matter = await _matter(conn, c["matter_id"])
        ins, ents, conflicts = await _pools(conn, matter)
        try:
            inputs = inspections.prepare(
                inspections.Matter(matter["id"], matter["department"]), ins, ents, conflicts,
                targets=c["targets"], inspectors_per_target=c["inspectors_per_target"],
                risk_weights=c["risk_weights"])
            result = inspections.committed_draw(c["secret"], inputs)
        except inspections.DrawError as e:
            failure = e
            await conn.execute(
                "UPDATE inspection_commitments SET failed_at = $2, failed_by = $3, "
                "failure = $4 WHERE id = $1", commitment_id, to_datetime(now), drawn_by, e.code)
        else:
            params = {**result.params_json(), "weight_by_risk": c["risk_weights"] is not None,
                      "seed_source": inspections.SEED_SCHEME}
            draw_id = await conn.fetchval(
                """INSERT INTO inspection_draws (seed, matter_id, params, drawn_at, drawn_by,
                       algorithm, result, commitment_id, inputs_digest)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id""",
                result.seed, matter["id"], params, to_datetime(now), drawn_by, result.algorithm,
                result.result_json(), commitment_id, inputs.digest())
            return await _draw_view(conn, int(draw_id))
    raise failure  # after the transaction: the failed attempt stays on the record


_DRAW_SUMMARY = """d.id, d.matter_id, m.name AS matter_name, m.department, d.seed, d.algorithm,
    d.drawn_at, d.drawn_by, d.published, d.published_at, d.published_by, d.commitment_id,
    d.inputs_digest, jsonb_array_length(d.result -> 'picks') AS targets,
    (SELECT count(*) FROM inspection_results r WHERE r.draw_id = d.id) AS results"""


async def list_draws(db: Querier, *, matter_id: str | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
    """Draws, newest first, without their (long) inputs."""
    rows = await db.fetch(
        f"""SELECT {_DRAW_SUMMARY} FROM inspection_draws d
            JOIN inspection_matters m ON m.id = d.matter_id
            WHERE $1::text IS NULL OR d.matter_id = $1 ORDER BY d.id DESC LIMIT $2""",
        matter_id, limit)
    return [row_view(r) for r in rows]


async def _draw_views(db: Querier, draw_ids: list[int]) -> list[dict[str, Any]]:
    """Staff views of these draws, in this order (unknown ids left out), in five queries
    whatever their number (the public list is read without login)."""
    rows = await db.fetch(
        f"""SELECT {_DRAW_SUMMARY}, d.params, d.result FROM inspection_draws d
            JOIN inspection_matters m ON m.id = d.matter_id WHERE d.id = ANY($1::bigint[])""",
        draw_ids)
    by_id = {int(r["id"]): row_view(r) for r in rows}
    views = [by_id[i] for i in draw_ids if i in by_id]
    commitments = {int(r["id"]): r for r in await db.fetch(
        """SELECT id, commitment, committed_at, committed_by, matter_id, targets,
                  inspectors_per_target, risk_weights, secret
           FROM inspection_commitments WHERE id = ANY($1::bigint[])""",
        [v["commitment_id"] for v in views if v["commitment_id"] is not None])}
    all_picks = [p for v in views for p in v["result"].get("picks", [])]
    ents = {r["id"]: r for r in await db.fetch(
        "SELECT e.id, e.name, e.industry, e.grid_id, g.name AS grid_name "
        "FROM market_entities e LEFT JOIN grids g ON g.id = e.grid_id WHERE e.id = ANY($1)",
        sorted({p["entity_id"] for p in all_picks}))}
    names = {r["id"]: r["name"] for r in await db.fetch(
        "SELECT id, name FROM inspectors WHERE id = ANY($1)",
        sorted({i for p in all_picks for i in p["inspectors"]}))}
    results = {(int(r["draw_id"]), r["entity_id"]): row_view(r) for r in await db.fetch(
        "SELECT draw_id, entity_id, outcome, notes, recorded_by, recorded_at, published_at, "
        "published_by FROM inspection_results WHERE draw_id = ANY($1::bigint[])",
        [v["id"] for v in views])}
    for view in views:
        c = commitments.get(view["commitment_id"])
        view["commitment"] = None if c is None else {
            k: v for k, v in row_view(c).items() if k != "secret"}
        view["secret"] = c["secret"] if c is not None and view["published"] else None
        view["picks"] = []
        for p in view["result"].get("picks", []):
            e = ents.get(p["entity_id"])
            res = results.get((view["id"], p["entity_id"]))
            if res is not None:
                del res["draw_id"]
                res["outcome_label"] = OUTCOME_LABELS.get(res["outcome"], res["outcome"])
            view["picks"].append({
                "entity_id": p["entity_id"], "risk_class": p["risk_class"],
                "entity_name": e["name"] if e else None,
                "industry": e["industry"] if e else None,
                "grid_id": e["grid_id"] if e else None,
                "grid_name": e["grid_name"] if e else None,
                "inspectors": [{"id": i, "name": names.get(i)} for i in p["inspectors"]],
                "result": res})
    return views


async def _draw_view(db: Querier, draw_id: int) -> dict[str, Any]:
    """The staff view: everything, with the commitment; the secret once published."""
    views = await _draw_views(db, [draw_id])
    if not views:
        raise NotFound(f"no draw {draw_id}", code="inspection.draw_not_found")
    return views[0]


async def get_draw(db: Querier, draw_id: int) -> dict[str, Any]:
    """A draw with its commitment, seed, inputs (``params``), stored ``result``, named
    picks and results (the secret only once published)."""
    return await _draw_view(db, draw_id)


async def _check(db: Querier, draw_id: int, *, lock: bool = False
                 ) -> tuple[asyncpg.Record, inspections.Verification]:
    row = await db.fetchrow(
        """SELECT d.seed, d.algorithm, d.params, d.result, d.published, d.commitment_id,
                  extract(epoch FROM d.drawn_at)::float8 AS drawn_s,
                  extract(epoch FROM c.committed_at)::float8 AS committed_s,
                  c.commitment, c.secret, c.matter_id, c.targets, c.inspectors_per_target,
                  c.risk_weights
           FROM inspection_draws d LEFT JOIN inspection_commitments c ON c.id = d.commitment_id
           WHERE d.id = $1""" + (" FOR UPDATE OF d" if lock else ""), draw_id)
    if row is None:
        raise NotFound(f"no draw {draw_id}", code="inspection.draw_not_found")
    if row["commitment_id"] is None:
        return row, inspections.verify(row["seed"], row["algorithm"], row["params"],
                                       row["result"])
    return row, inspections.verify_committed(
        commitment=row["commitment"], terms=_terms(row), committed_at=row["committed_s"],
        drawn_at=row["drawn_s"], secret=row["secret"], seed=row["seed"],
        algorithm=row["algorithm"], params=row["params"], result=row["result"])


async def verify_draw(db: Querier, draw_id: int) -> dict[str, Any]:
    """Re-check a stored draw: the commitment opens with the secret and came first, the
    terms are the announced ones, the seed follows, the draw re-runs to its result.
    ``committed`` False: a draw from before commitments (its seed was not fixed ahead)."""
    row, outcome = await _check(db, draw_id)
    return {"draw_id": draw_id, "reproduced": outcome.reproduced, "reason": outcome.reason,
            "algorithm": row["algorithm"], "committed": row["commitment_id"] is not None}


async def publish_draw(db: Querier, draw_id: int, *, by: str, now: float) -> dict[str, Any]:
    """Publish a draw (revealing its secret) and every result recorded so far.

    Publishing again keeps the draw's first time and publisher and publishes the results
    recorded since. Raises ``Conflict``: ``inspection.uncommitted`` for a draw made
    before commitments (its seed was not fixed in advance), ``inspection.not_reproducible``
    for a draw that fails ``verify_draw``.
    """
    async with _transaction(db) as conn:
        row, outcome = await _check(conn, draw_id, lock=True)
        if not row["published"]:
            if row["commitment_id"] is None:
                raise Conflict(f"draw {draw_id} has no commitment: its seed was not fixed "
                               "in advance, so it cannot be published as a fair draw",
                               code="inspection.uncommitted")
            if not outcome.reproduced:
                raise Conflict(f"draw {draw_id} does not reproduce: {outcome.reason}",
                               code="inspection.not_reproducible")
            await conn.execute(
                "UPDATE inspection_draws SET published = true, published_at = $2, "
                "published_by = $3 WHERE id = $1", draw_id, to_datetime(now), by)
        await conn.execute(
            "UPDATE inspection_results SET published_at = $2, published_by = $3 "
            "WHERE draw_id = $1 AND published_at IS NULL", draw_id, to_datetime(now), by)
        return await _draw_view(conn, draw_id)


async def record_result(db: Querier, draw_id: int, *, entity_id: str, outcome: str,
                        notes: str, recorded_by: str, now: float) -> dict[str, Any]:
    """Record what the inspection of one drawn entity found (once per entity); it is
    public once a supervisor publishes the draw again.

    Raises ``NotFound`` (``inspection.draw_not_found``), ``InvalidInput``
    (``inspection.bad_outcome``, ``inspection.not_drawn``: the entity is not a target of
    this draw) or ``Conflict`` (``inspection.result_exists``).
    """
    if outcome not in OUTCOMES:
        raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}",
                           code="inspection.bad_outcome")
    async with _transaction(db) as conn:
        result = await conn.fetchval("SELECT result FROM inspection_draws WHERE id = $1",
                                     draw_id)
        if result is None:
            raise NotFound(f"no draw {draw_id}", code="inspection.draw_not_found")
        if entity_id not in {p["entity_id"] for p in result.get("picks", [])}:
            raise InvalidInput(f"{entity_id} was not drawn in draw {draw_id}",
                               code="inspection.not_drawn")
        inserted = await conn.fetchval(
            """INSERT INTO inspection_results (draw_id, entity_id, outcome, notes, recorded_by,
                                               recorded_at)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING entity_id""",
            draw_id, entity_id, outcome, notes, recorded_by, to_datetime(now))
        if inserted is None:
            raise Conflict(f"a result for {entity_id} in draw {draw_id} is already recorded",
                           code="inspection.result_exists")
        return await _draw_view(conn, draw_id)


# ---------------------------------------------------------------- the public views
_PUBLIC_DRAW_KEYS = ("id", "matter_id", "matter_name", "department", "algorithm",
                     "drawn_at", "published_at", "seed", "inputs_digest", "secret",
                     "params", "result")
_PUBLIC_COMMITMENT_KEYS = ("id", "commitment", "committed_at", "matter_id", "targets",
                           "inspectors_per_target", "risk_weights")
_PUBLIC_RESULT_KEYS = ("outcome", "outcome_label", "notes", "recorded_at", "published_at")


def public_view(view: Mapping[str, Any]) -> dict[str, Any]:
    """The public's copy of a published draw's staff view: the matter, the commitment and
    its terms, the revealed secret, every input and the result (enough to re-run it with
    scripts/verify_draw.py), the targets and inspectors by name, the dates, and the
    published results only. Staff login names are left out (they are not the public's
    business and would hand out user names to guess passwords for)."""
    out = {k: view[k] for k in _PUBLIC_DRAW_KEYS}
    params = view["params"]
    out["params"] = {k: v for k, v in params.items() if k not in ("seed_source",)}
    c = view["commitment"]
    out["commitment"] = None if c is None else {k: c[k] for k in _PUBLIC_COMMITMENT_KEYS}
    out["seed_scheme"] = inspections.SEED_SCHEME if c is not None else None
    out["picks"] = []
    for p in view["picks"]:
        r = p["result"]
        shown = r is not None and r.get("published_at") is not None
        out["picks"].append({
            **{k: p[k] for k in ("entity_id", "entity_name", "industry", "grid_name",
                                 "risk_class", "inspectors")},
            "result": {k: r[k] for k in _PUBLIC_RESULT_KEYS} if shown and r else None})
    return out


async def public_draws(db: Querier, *, limit: int = 50,
                       before: int | None = None) -> list[dict[str, Any]]:
    """The "one public": published draws, newest first, ids below ``before`` if given
    (``public_view`` of each)."""
    ids = await db.fetch("SELECT id FROM inspection_draws WHERE published "
                         "AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $1",
                         limit, before)
    return [public_view(v) for v in await _draw_views(db, [int(r["id"]) for r in ids])]


async def public_draw(db: Querier, draw_id: int) -> dict[str, Any]:
    """One published draw as the public sees it; an unpublished one is not found."""
    published = await db.fetchval("SELECT published FROM inspection_draws WHERE id = $1",
                                  draw_id)
    if not published:
        raise NotFound(f"no published draw {draw_id}", code="inspection.draw_not_found")
    return public_view(await _draw_view(db, draw_id))
