"""Double-random draws over the real database: commitments, draws, results, publication
(dispatch/inspection_store.py) and their routes (hub/inspections_api.py) behind the real
access middleware with real API tokens, the public JSON and page without login, and the
standalone scripts/verify_draw.py run as a separate process on the downloaded JSON.

The module works in a scratch database of its own (migrated, demo town and registries
loaded): its draws and commitments must not show up in other tests' public lists.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from core.db import connect, create_pool, migrate
from core.errors import Conflict
from dispatch import inspection_schedule as schedule
from dispatch import inspection_store as store
from dispatch import inspections
from hub import auth, inspections_api, town, views
from hub import errors as hub_errors
from hub import inspection_registry as registry
from hub.access import AccessMiddleware
from tests.conftest import ROOT, create_database, drop_database

CST = timezone(timedelta(hours=8))
SCRIPT = ROOT / "scripts" / "verify_draw.py"


def cst(*args: int) -> float:
    return datetime(*args, tzinfo=CST).timestamp()


@pytest_asyncio.fixture(scope="module")
async def pool(base_db_url: str) -> AsyncIterator[asyncpg.Pool]:
    name = f"gridhub_draws_{os.getpid()}"
    url = await create_database(base_db_url, name)
    conn = await connect(url)
    try:
        await migrate(conn)
        await town.load_town(conn, town.read_town(registry.TOWN_FILE))
        await registry.load_registry(conn)
    finally:
        await conn.close()
    p = await create_pool(url)
    yield p
    await p.close()
    await drop_database(base_db_url, name)


@pytest_asyncio.fixture(scope="module")
async def tokens(pool: asyncpg.Pool) -> dict[str, str]:
    """One API token per role; the token's name is the principal recorded as actor."""
    return {role: await auth.create_token(pool, name, role) for role, name in
            (("viewer", "viewer-zhao"), ("operator", "op-li"), ("supervisor", "sup-wang"))}


@pytest_asyncio.fixture(scope="module")
async def anon(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The inspection routes and pages behind the real access middleware, no credentials
    (pass ``headers=as_(role)`` to act as someone)."""
    app = FastAPI()
    hub_errors.install(app)
    app.add_middleware(AccessMiddleware)
    app.include_router(inspections_api.router)
    app.include_router(views.router)
    app.state.hub = SimpleNamespace(
        pool=pool, settings=SimpleNamespace(map_tile_url="", session_touch_s=60.0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://hub.test") as c:
        yield c


@pytest.fixture
def as_(tokens: dict[str, str]) -> Any:
    return lambda role: {"Authorization": f"Bearer {tokens[role]}"}


async def _commit_and_draw(pool: asyncpg.Pool, matter_id: str, targets: int, at: float,
                           **kw: Any) -> dict[str, Any]:
    c = await store.commit(pool, matter_id=matter_id, targets=targets, by="sup:test",
                           now=at, **kw)
    return await store.make_draw(pool, commitment_id=c["id"], now=at + 60,
                                 drawn_by="op:test")


# ====================================================================== the shell
async def _conflicted_matter(pool: asyncpg.Pool) -> tuple[str, int, set[tuple[str, str]]]:
    """A matter some conflict applies to, its entity count, and all conflict pairs."""
    row = await pool.fetchrow(
        """SELECT m.id, (SELECT count(*) FROM market_entities e2 WHERE e2.active AND
                         (cardinality(m.industries) = 0 OR e2.industry = ANY(m.industries))) AS n
           FROM inspector_conflicts c JOIN inspectors i ON i.id = c.inspector_id
           JOIN market_entities e ON e.id = c.entity_id
           JOIN inspection_matters m ON m.department = i.department
                AND (cardinality(m.industries) = 0 OR e.industry = ANY(m.industries))
           ORDER BY 2, 1 LIMIT 1""")
    pairs = {(r["inspector_id"], r["entity_id"])
             for r in await pool.fetch("SELECT inspector_id, entity_id FROM inspector_conflicts")}
    return row["id"], int(row["n"]), pairs


async def test_committed_draw_is_stored_reproducible_and_honours_recusal(
        pool: asyncpg.Pool) -> None:
    matter_id, n, pairs = await _conflicted_matter(pool)
    # Every entity of the matter is drawn, so the conflicted ones certainly are.
    view = await _commit_and_draw(pool, matter_id, n, cst(2025, 5, 1))
    assert len(view["picks"]) == n and view["algorithm"] == inspections.ALGORITHM
    assert view["params"]["seed_source"] == inspections.SEED_SCHEME
    assert view["secret"] is None  # not before publication
    drawn = {(i["id"], p["entity_id"]) for p in view["picks"] for i in p["inspectors"]}
    assert not drawn & pairs
    assert {e for _, e in pairs} & {p["entity_id"] for p in view["picks"]}
    for p in view["picks"]:
        assert len({i["id"] for i in p["inspectors"]}) >= 2
        assert p["entity_name"] and all(i["name"] for i in p["inspectors"])
    assert await store.verify_draw(pool, view["id"]) == {
        "draw_id": view["id"], "reproduced": True, "reason": None,
        "algorithm": inspections.ALGORITHM, "committed": True}


async def test_registry_changes_do_not_break_verification(pool: asyncpg.Pool) -> None:
    view = await _commit_and_draw(pool, "M02", 5, cst(2025, 5, 2))
    first = view["picks"][0]
    entity, inspector = first["entity_id"], first["inspectors"][0]["id"]
    await pool.execute("UPDATE market_entities SET risk_class = 'A', active = false "
                       "WHERE id = $1", entity)
    await pool.execute("UPDATE inspectors SET active = false WHERE id = $1", inspector)
    try:
        assert (await store.verify_draw(pool, view["id"]))["reproduced"] is True
    finally:  # the registry as it was, for the other tests
        await pool.execute("UPDATE market_entities SET risk_class = $2, active = true "
                           "WHERE id = $1", entity, first["risk_class"])
        await pool.execute("UPDATE inspectors SET active = true WHERE id = $1", inspector)


async def test_a_commitment_seeds_one_draw_and_only_after_it_was_made(
        pool: asyncpg.Pool) -> None:
    at = cst(2025, 5, 4)
    c = await store.commit(pool, matter_id="M03", targets=3, by="sup:test", now=at)
    with pytest.raises(Conflict) as err:  # not in the same instant it is announced
        await store.make_draw(pool, commitment_id=c["id"], now=at, drawn_by="op:test")
    assert err.value.code == "inspection.commitment_too_new"
    first = await store.make_draw(pool, commitment_id=c["id"], now=at + 1, drawn_by="op:test")
    with pytest.raises(Conflict) as err:  # no second try with the same secret
        await store.make_draw(pool, commitment_id=c["id"], now=at + 2, drawn_by="op:test")
    assert err.value.code == "inspection.commitment_used"
    assert (await store.get_commitment(pool, c["id"]))["draw_id"] == first["id"]


async def test_two_draws_racing_for_one_commitment(pool: asyncpg.Pool) -> None:
    at = cst(2025, 5, 6)
    c = await store.commit(pool, matter_id="M03", targets=2, by="sup:test", now=at)
    outcomes = await asyncio.gather(
        *(store.make_draw(pool, commitment_id=c["id"], now=at + 1, drawn_by=f"op:{k}")
          for k in range(4)), return_exceptions=True)
    drawn = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(drawn) == 1 and len(refused) == 3, outcomes
    assert all(e.code == "inspection.commitment_used" for e in refused)


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("UPDATE inspection_draws SET result = jsonb_set(result, '{picks,0,inspectors,0}', "
         "'\"INS-999\"') WHERE id = $1", "an inspector swapped"),
        ("UPDATE inspection_draws SET result = jsonb_set(result, '{picks,0,entity_id}', "
         "'\"ME-0001\"') WHERE id = $1", "a target swapped"),
        ("UPDATE inspection_draws SET seed = $2 WHERE id = $1", "a chosen seed written in"),
        ("UPDATE inspection_commitments SET secret = $2 WHERE id = "
         "(SELECT commitment_id FROM inspection_draws WHERE id = $1)", "another secret"),
        ("UPDATE inspection_commitments SET committed_at = now() WHERE id = "
         "(SELECT commitment_id FROM inspection_draws WHERE id = $1)", "committed afterwards"),
        ("UPDATE inspection_commitments SET targets = targets + 1 WHERE id = "
         "(SELECT commitment_id FROM inspection_draws WHERE id = $1)", "other terms"),
    ],
)
async def test_tampered_draw_does_not_verify_or_publish(pool: asyncpg.Pool, sql: str,
                                                        why: str) -> None:
    view = await _commit_and_draw(pool, "M04", 4, cst(2025, 5, 3))
    args = [view["id"]] + (["0" * 64] if "$2" in sql else [])
    await pool.execute(sql, *args)
    verdict = await store.verify_draw(pool, view["id"])
    assert verdict["reproduced"] is False and verdict["reason"], why
    with pytest.raises(Conflict) as err:
        await store.publish_draw(pool, view["id"], by="sup:test", now=cst(2025, 5, 3, 12))
    assert err.value.code == "inspection.not_reproducible"


async def test_a_draw_from_before_commitments_is_not_published(pool: asyncpg.Pool) -> None:
    """A draw stored the old way (a seed given or generated, no commitment) still re-runs,
    but cannot be published as a fair draw: its seed was not fixed in advance."""
    matter = await pool.fetchrow("SELECT id, department, industries FROM inspection_matters "
                                 "WHERE id = 'M05'")
    ins, ents, conflicts = await store._pools(pool, matter)
    old = inspections.draw("typed-by-hand", inspections.Matter("M05", matter["department"]),
                           ins, ents, conflicts, targets=3)
    draw_id = await pool.fetchval(
        """INSERT INTO inspection_draws (seed, matter_id, params, drawn_at, drawn_by,
               algorithm, result) VALUES ($1, 'M05', $2, now(), 'operator:old', $3, $4)
           RETURNING id""", old.seed, {**old.params_json(), "seed_source": "caller"},
        old.algorithm, old.result_json())
    verdict = await store.verify_draw(pool, draw_id)
    assert verdict["reproduced"] is True and verdict["committed"] is False
    with pytest.raises(Conflict) as err:
        await store.publish_draw(pool, draw_id, by="sup:test", now=cst(2025, 5, 5))
    assert err.value.code == "inspection.uncommitted"


async def test_scheduled_draw_commits_first_and_draws_once_a_month(pool: asyncpg.Pool) -> None:
    now = cst(2024, 11, 30, 22, 0)  # China time: still November
    matters = [m["id"] for m in await store.list_matters(pool)]
    first = await schedule.scheduled_draw(pool, now)
    assert [r["matter_id"] for r in first] == matters
    assert all("committed" in r for r in first), first  # announced, not drawn yet
    drawn = await schedule.scheduled_draw(pool, now + 3600)  # the next run draws with them
    assert all("draw_id" in r and "error" not in r for r in drawn), drawn
    again = await schedule.scheduled_draw(pool, now + 5400)  # 23:30 on 30 November
    assert all(r.get("skipped") == "already_drawn" for r in again)
    december = await schedule.scheduled_draw(pool, cst(2024, 12, 1, 0, 30))
    assert all("draw_id" in r and "skipped" not in r for r in december)
    for r in [*drawn, *december]:
        draw = await store.get_draw(pool, r["draw_id"])
        assert draw["drawn_by"] == schedule.SCHEDULER_ACTOR
        assert draw["params"]["weight_by_risk"] is True
        # December's draw used the commitment announced when November's was drawn.
        assert draw["commitment"]["committed_at"] < draw["drawn_at"]
        assert (await store.verify_draw(pool, r["draw_id"]))["reproduced"]
    open_now = [c for c in await store.list_commitments(pool, open_only=True)
                if c["committed_by"] == schedule.SCHEDULER_ACTOR]
    assert sorted(c["matter_id"] for c in open_now) == sorted(matters)  # January's, public


# ====================================================================== the routes
async def test_the_operator_cannot_influence_the_draw(anon: httpx.AsyncClient, as_: Any,
                                                      pool: asyncpg.Pool) -> None:
    """No route takes a seed; the seed comes from a secret committed to (and published as
    its hash) before the draw, and the draw's inputs; the secret matches the commitment."""
    op, sup = as_("operator"), as_("supervisor")
    # No seed anywhere: the old way of asking for a draw, or a seed next to a commitment,
    # is refused outright, and so is a commitment with a seed.
    r = await anon.post("/api/inspections/draws", headers=op,
                        json={"matter_id": "M01", "targets": 3, "seed": "chosen"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "request.invalid")
    r = await anon.post("/api/inspections/commitments", headers=sup,
                        json={"matter_id": "M01", "targets": 6, "seed": "chosen"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "request.invalid")

    r = await anon.post("/api/inspections/commitments", headers=sup,
                        json={"matter_id": "M01", "targets": 6})
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["status"] == "open" and len(c["commitment"]) == 64 and "secret" not in c
    secret = await pool.fetchval("SELECT secret FROM inspection_commitments WHERE id = $1",
                                 c["id"])
    r = await anon.post("/api/inspections/draws", headers=op,
                        json={"commitment_id": c["id"], "seed": "chosen"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "request.invalid")

    # The commitment is public before the draw exists.
    public = (await anon.get("/api/inspections/public")).json()
    assert {"id": c["id"], "status": "open", "commitment": c["commitment"]}.items() <= next(
        x for x in public["commitments"] if x["id"] == c["id"]).items()

    r = await anon.post("/api/inspections/draws", headers=op, json={"commitment_id": c["id"]})
    assert r.status_code == 201, r.text
    draw = r.json()
    assert secret not in r.text  # the drawer never sees the secret
    assert draw["commitment"]["committed_at"] < draw["drawn_at"]
    r = await anon.post("/api/inspections/draws", headers=op, json={"commitment_id": c["id"]})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "inspection.commitment_used")
    staff = await anon.get(f"/api/inspections/draws/{draw['id']}", headers=op)
    assert staff.json()["secret"] is None and secret not in staff.text

    r = await anon.post(f"/api/inspections/draws/{draw['id']}/publish", headers=sup)
    assert r.status_code == 200, r.text
    revealed = r.json()["secret"]
    assert hashlib.sha256(revealed.encode()).hexdigest() == c["commitment"]
    # The same inputs and the committed secret give the same draw, and the seed is theirs.
    inputs = inspections.inputs_from_params(draw["params"])
    assert draw["inputs_digest"] == inputs.digest()
    assert draw["seed"] == inspections.committed_seed(revealed, inputs.digest())
    assert inspections.committed_draw(revealed, inputs).result_json() == draw["result"]


async def test_every_inspection_step_records_the_logged_in_principal(
        anon: httpx.AsyncClient, as_: Any, pool: asyncpg.Pool) -> None:
    op, sup = as_("operator"), as_("supervisor")
    c = (await anon.post("/api/inspections/commitments", headers=sup,
                         json={"matter_id": "M02", "targets": 2})).json()
    assert c["committed_by"] == "sup-wang"
    r = await anon.post("/api/inspections/commitments", headers=sup,
                        json={"matter_id": "M02", "targets": 2, "committed_by": "mallory"})
    assert r.status_code == 422  # a name in the body is refused, not recorded
    draw = (await anon.post("/api/inspections/draws", headers=op,
                            json={"commitment_id": c["id"]})).json()
    assert draw["drawn_by"] == "op-li"
    target = draw["picks"][0]["entity_id"]
    r = await anon.post(f"/api/inspections/draws/{draw['id']}/results", headers=op, json={
        "entity_id": target, "outcome": "no_problem", "recorded_by": "mallory"})
    assert r.status_code == 201, r.text
    r = await anon.post(f"/api/inspections/draws/{draw['id']}/publish", headers=sup,
                        json={"by": "mallory"})
    assert r.status_code == 200, r.text
    row = await pool.fetchrow(
        """SELECT c.committed_by, d.drawn_by, d.published_by, r.recorded_by,
                  r.published_by AS result_published_by
           FROM inspection_draws d JOIN inspection_commitments c ON c.id = d.commitment_id
           JOIN inspection_results r ON r.draw_id = d.id WHERE d.id = $1""", draw["id"])
    assert dict(row) == {"committed_by": "sup-wang", "drawn_by": "op-li",
                         "published_by": "sup-wang", "recorded_by": "op-li",
                         "result_published_by": "sup-wang"}
    # Roles: an operator neither announces nor publishes; nobody anonymous does anything.
    r = await anon.post("/api/inspections/commitments", headers=op,
                        json={"matter_id": "M02", "targets": 2})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "auth.forbidden")
    r = await anon.post(f"/api/inspections/draws/{draw['id']}/publish", headers=op)
    assert r.status_code == 403
    for path in ("/api/inspections/draws", "/api/inspections/commitments",
                 "/api/inspections/matters", f"/api/inspections/draws/{draw['id']}"):
        assert (await anon.get(path)).status_code == 401


async def test_public_json_and_page_show_only_what_was_published(
        anon: httpx.AsyncClient, as_: Any) -> None:
    op, sup = as_("operator"), as_("supervisor")

    async def announce_and_draw(matter: str) -> dict[str, Any]:
        c = (await anon.post("/api/inspections/commitments", headers=sup,
                             json={"matter_id": matter, "targets": 3})).json()
        return (await anon.post("/api/inspections/draws", headers=op,
                                json={"commitment_id": c["id"]})).json()

    shown, hidden = await announce_and_draw("M06"), await announce_and_draw("M07")
    first, second = shown["picks"][0]["entity_id"], shown["picks"][1]["entity_id"]
    url = f"/api/inspections/draws/{shown['id']}"
    await anon.post(f"{url}/results", headers=op, json={
        "entity_id": first, "outcome": "rectification_ordered", "notes": "灭火器过期，已责令更换"})
    await anon.post(f"{url}/publish", headers=sup)
    # A result recorded after publication waits for the next one.
    await anon.post(f"{url}/results", headers=op, json={
        "entity_id": second, "outcome": "case_filed", "notes": "无证经营，已立案"})
    await anon.post(f"/api/inspections/draws/{hidden['id']}/results", headers=op, json={
        "entity_id": hidden["picks"][0]["entity_id"], "outcome": "refused",
        "notes": "未公开的结果"})

    r = await anon.get("/api/inspections/public")  # no credentials
    assert r.status_code == 200
    doc = r.json()
    ids = {d["id"] for d in doc["draws"]}
    assert shown["id"] in ids and hidden["id"] not in ids
    mine = next(d for d in doc["draws"] if d["id"] == shown["id"])
    outcomes = {p["entity_id"]: p["result"] and p["result"]["outcome"] for p in mine["picks"]}
    assert outcomes[first] == "rectification_ordered" and outcomes[second] is None
    assert mine["matter_name"] and mine["drawn_at"] and mine["published_at"]
    assert all(p["entity_name"] and all(i["name"] for i in p["inspectors"])
               for p in mine["picks"])
    status = {c["id"]: c for c in doc["commitments"]}
    assert status[hidden["commitment"]["id"]]["status"] == "drawn"
    assert status[hidden["commitment"]["id"]]["draw_id"] is None
    assert status[shown["commitment"]["id"]]["draw_id"] == shown["id"]
    for secret_or_name in ("op-li", "sup-wang", "未公开的结果", "无证经营"):
        assert secret_or_name not in r.text
    older = (await anon.get("/api/inspections/public", params={"before": shown["id"]})).json()
    assert all(d["id"] < shown["id"] for d in older["draws"])
    assert all(c["id"] < shown["id"] for c in older["commitments"])
    r = await anon.get("/api/inspections/public", params={"limit": 100000})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "request.invalid")
    assert (await anon.get(f"/api/inspections/public/draws/{hidden['id']}")).status_code == 404
    one = await anon.get(f"/api/inspections/public/draws/{shown['id']}")
    assert one.status_code == 200 and one.json() == mine

    page = await anon.get("/inspections/public")  # Chinese by default
    assert page.status_code == 200 and 'lang="zh-CN"' in page.text
    assert "双随机抽查公示" in page.text
    assert f'data-draw-id="{shown["id"]}"' in page.text
    assert f'data-draw-id="{hidden["id"]}"' not in page.text
    assert mine["secret"] in page.text and mine["commitment"]["commitment"] in page.text
    assert mine["picks"][0]["entity_name"] in page.text and "灭火器过期" in page.text
    assert "无证经营" not in page.text and "未公开的结果" not in page.text
    english = await anon.get("/inspections/public?lang=en")
    assert "Double-random inspections: public notice" in english.text
    assert "Rectification ordered" in english.text
    # The staff page links to it; the staff page itself needs a login.
    staff = await anon.get("/inspections", headers=as_("viewer"))
    assert 'href="/inspections/public"' in staff.text
    assert (await anon.get("/inspections")).status_code == 303


def _run_script(path: Path) -> subprocess.CompletedProcess[str]:
    """The script as a citizen runs it: its own process, isolated (-I: no environment, no
    user site, no current directory on the path; -S: no site-packages at all), in a
    directory without the project, so it can only use the standard library."""
    return subprocess.run([sys.executable, "-I", "-S", str(SCRIPT), str(path)],
                          cwd=path.parent, capture_output=True, text=True, timeout=60)


async def test_the_standalone_script_reproduces_published_draws(
        anon: httpx.AsyncClient, as_: Any, tmp_path: Path) -> None:
    sup = as_("supervisor")
    for matter, targets in (("M08", 4), ("M09", 2)):
        c = (await anon.post("/api/inspections/commitments", headers=sup,
                             json={"matter_id": matter, "targets": targets})).json()
        d = (await anon.post("/api/inspections/draws", headers=as_("operator"),
                             json={"commitment_id": c["id"]})).json()
        assert (await anon.post(f"/api/inspections/draws/{d['id']}/publish",
                                headers=sup)).status_code == 200
    doc = (await anon.get("/api/inspections/public")).json()
    assert len(doc["draws"]) >= 2
    path = tmp_path / "public.json"
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    run = _run_script(path)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [json.loads(x) for x in run.stdout.splitlines()]
    assert {x["draw_id"] for x in lines[:-1]} == {d["id"] for d in doc["draws"]}
    assert all(x["reproduced"] for x in lines[:-1])
    assert lines[-1] == {"draws": len(doc["draws"]), "all_reproduced": True}

    one = tmp_path / "one.json"  # a single draw's document works too
    one.write_text((await anon.get(f"/api/inspections/public/draws/{doc['draws'][0]['id']}"))
                   .text, encoding="utf-8")
    assert _run_script(one).returncode == 0

    def tampered(edit: Any) -> str:
        bad = copy.deepcopy(doc)
        edit(bad["draws"][0])
        path.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
        run = _run_script(path)
        assert run.returncode == 1, run.stdout
        return str(json.loads(run.stdout.splitlines()[0])["reason"])

    def swap_inspector(d: dict[str, Any]) -> None:
        d["result"]["picks"][0]["inspectors"][0] = "INS-999"

    def other_secret(d: dict[str, Any]) -> None:
        d["secret"] = "0" * 64

    def drop_entity(d: dict[str, Any]) -> None:
        d["params"]["entities"] = [e for e in d["params"]["entities"]
                                   if e[0] != d["result"]["picks"][0]["entity_id"]]

    def late_commitment(d: dict[str, Any]) -> None:
        d["commitment"]["committed_at"] = d["drawn_at"] + 1

    def chosen_seed(d: dict[str, Any]) -> None:
        d["seed"] = "chosen"

    assert "re-running" in tampered(swap_inspector)
    assert "commitment" in tampered(other_secret)
    assert "digest" in tampered(drop_entity) or "seed" in tampered(drop_entity)
    assert "before" in tampered(late_commitment)
    assert "seed" in tampered(chosen_seed)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"matter_id": "M99", "targets": 1}, 404, "inspection.matter_not_found"),
        ({"matter_id": "M01", "targets": 100000}, 422, "request.invalid"),
        ({"matter_id": "M01", "targets": 1, "inspectors_per_target": 1}, 422,
         "request.invalid"),
    ],
)
async def test_commitment_api_errors(anon: httpx.AsyncClient, as_: Any, body: dict[str, Any],
                                     status: int, code: str) -> None:
    r = await anon.post("/api/inspections/commitments", headers=as_("supervisor"), json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)


@pytest.mark.parametrize(
    ("matter", "targets", "code"),
    [("M10", 50, "inspection.not_enough_entities"),
     ("MX-LONELY", 1, "inspection.not_enough_inspectors")],
)
async def test_a_failed_draw_uses_the_commitment_up_in_public(
        anon: httpx.AsyncClient, as_: Any, pool: asyncpg.Pool, matter: str, targets: int,
        code: str) -> None:
    """A failed attempt may tell something about the seed of those inputs (which target
    lacked inspectors): the same secret is never tried again on changed inputs, and the
    failure is on the public record."""
    # A matter of a department with a single inspector: no team of two is possible.
    await pool.execute(
        """INSERT INTO inspectors (id, name, department) VALUES ('INS-LONELY', '孤勇', 'lonely')
           ON CONFLICT DO NOTHING""")
    await pool.execute(
        """INSERT INTO inspection_matters (id, name, department) VALUES
           ('MX-LONELY', '测试事项', 'lonely') ON CONFLICT DO NOTHING""")
    try:
        c = (await anon.post("/api/inspections/commitments", headers=as_("supervisor"),
                             json={"matter_id": matter, "targets": targets})).json()
        r = await anon.post("/api/inspections/draws", headers=as_("operator"),
                            json={"commitment_id": c["id"]})
        assert (r.status_code, r.json()["error"]["code"]) == (422, code)
        after = await store.get_commitment(pool, c["id"])
        assert (after["status"], after["failure"], after["failed_by"]) == ("failed", code,
                                                                           "op-li")
        r = await anon.post("/api/inspections/draws", headers=as_("operator"),
                            json={"commitment_id": c["id"]})
        assert (r.status_code, r.json()["error"]["code"]) == (409,
                                                              "inspection.commitment_used")
        public = (await anon.get("/api/inspections/public")).json()["commitments"]
        mine = next(x for x in public if x["id"] == c["id"])
        assert (mine["status"], mine["failure"]) == ("failed", code)
        page = (await anon.get("/inspections/public")).text
        assert f'data-commitment-id="{c["id"]}" data-status="failed"' in page
    finally:  # the matter would fail the scheduled draws
        await pool.execute("DELETE FROM inspection_commitments WHERE matter_id = 'MX-LONELY'")
        await pool.execute("DELETE FROM inspection_matters WHERE id = 'MX-LONELY'")
        await pool.execute("DELETE FROM inspectors WHERE id = 'INS-LONELY'")
    r = await anon.post("/api/inspections/draws", headers=as_("operator"),
                        json={"commitment_id": 999999})
    assert (r.status_code, r.json()["error"]["code"]) == (404,
                                                          "inspection.commitment_not_found")


async def test_result_api_errors(anon: httpx.AsyncClient, as_: Any) -> None:
    op = as_("operator")
    c = (await anon.post("/api/inspections/commitments", headers=as_("supervisor"),
                         json={"matter_id": "M02", "targets": 2})).json()
    draw = (await anon.post("/api/inspections/draws", headers=op,
                            json={"commitment_id": c["id"]})).json()
    drawn = {p["entity_id"] for p in draw["picks"]}
    other = next(f"ME-{k:04d}" for k in range(1, 300) if f"ME-{k:04d}" not in drawn)
    url = f"/api/inspections/draws/{draw['id']}/results"
    body = {"entity_id": other, "outcome": "no_problem"}
    r = await anon.post(url, headers=op, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "inspection.not_drawn")
    body["entity_id"] = draw["picks"][0]["entity_id"]
    assert (await anon.post(url, headers=op, json=body)).status_code == 201
    r = await anon.post(url, headers=op, json=body)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "inspection.result_exists")
    r = await anon.post(url, headers=op, json={**body, "outcome": "great"})
    assert r.status_code == 422
    r = await anon.post("/api/inspections/draws/999999/verify", headers=op)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "inspection.draw_not_found")
