"""Evidence photos: upload from phones, storage, attachment to case steps, serving.

Storage is content-addressed on the hub's disk (``Settings.photo_dir``, default
``<var_dir>/photos``): ``<sha[:2]>/<sha>.orig`` is the upload exactly as received (the
evidence; its SHA-256 is its name), ``.jpg`` and ``.thumb.jpg`` the copies shown
(``core/photo_check.py``: upright, no metadata). Files rather than PostgreSQL rows: photos
are large, written once and read as whole files, so the filesystem serves them without
loading the database's buffers and WAL with megabytes per case step, backups of the
database stay small, and the database keeps what must be transactional: the photo's
facts, which case step it backs, and the case-log entry naming its hash. A file that is
swapped or edited later no longer hashes to its name; a row pointed at another photo no
longer matches the log entry, and an edited log entry breaks the hash chain
(``photo_evidence`` checks all three).

Attaching photos to a step (``attach``) appends an ``evidence`` entry to the case log,
``<stage> sha256 <hex> <hex> ...``, just before the step itself, in the step's transaction.
Only the uploader's own photos can be attached. Photos are served (copies only, never the
original with its metadata) to staff who read cases, and to a phone only for the cases it
may see (its unit's, or its grids' for a grid worker) or that it uploaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from core import clock, photo_check
from core.db import Conn, Querier, row_view
from core.errors import Forbidden, InvalidInput, NotFound
from core.settings import Settings
from dispatch import store
from hub.access import actor_of, principal_of
from hub.params import RowId
from hub.state import HubDep

router = APIRouter()

# At most this many photos back one case step: enough for before/after from several
# angles; more is a bulk upload the case record does not need.
MAX_PHOTOS_PER_STEP = 6
EVIDENCE_ACTION = "evidence"
VARIANTS = {"display": ".jpg", "thumb": ".thumb.jpg"}
# Copies are immutable (content-addressed): browsers may keep them, privately.
CACHE_CONTROL = "private, max-age=86400, immutable"
Sha = Annotated[str, PathParam(pattern="^[0-9a-f]{64}$")]


def photo_dir(settings: Settings) -> Path:
    return settings.photo_dir or settings.var_dir / "photos"


def _path(root: Path, sha: str, suffix: str) -> Path:
    return root / sha[:2] / (sha + suffix)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".up-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _store(root: Path, data: bytes, checked: photo_check.Checked) -> None:
    """Write the three files (the original last: its presence means all are there)."""
    _write_atomic(_path(root, checked.sha256, ".jpg"), checked.display)
    _write_atomic(_path(root, checked.sha256, ".thumb.jpg"), checked.thumb)
    _write_atomic(_path(root, checked.sha256, ".orig"), data)


def file_sha256(root: Path, sha: str) -> str | None:
    try:
        return hashlib.sha256(_path(root, sha, ".orig").read_bytes()).hexdigest()
    except OSError:
        return None


def photo_view(row: Any) -> dict[str, Any]:
    v = row_view(row)
    sha = v["sha256"]
    v["display_url"] = f"/api/photos/{sha}/display"
    v["thumb_url"] = f"/api/photos/{sha}/thumb"
    return v


@router.post("/api/field/photos", status_code=201)
async def upload(request: Request, hub: HubDep) -> dict[str, Any]:
    """The request body is the image file itself (``Content-Type`` is not trusted: the
    bytes are decoded). Content-addressed, so sending the same photo twice is harmless."""
    s: Settings = hub.settings
    data = await request.body()
    limits = photo_check.Limits(max_bytes=s.photo_max_bytes, max_pixels=s.photo_max_pixels)
    # Decoding and re-encoding take ~0.1-0.5 s of CPU for a phone photo: off the loop.
    checked = await asyncio.to_thread(photo_check.check, data, limits, ZoneInfo(s.town_tz))
    root = photo_dir(s)
    await asyncio.to_thread(_store, root, data, checked)
    actor = actor_of(request)
    row = await hub.pool.fetchrow(
        """INSERT INTO photos (sha256, mime, bytes, width, height, taken_at, lon, lat,
                               uploaded_by)
           VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7, $8, $9)
           ON CONFLICT (sha256) DO UPDATE SET sha256 = excluded.sha256
           RETURNING *""",
        checked.sha256, checked.mime, checked.size, checked.width, checked.height,
        checked.taken_at, checked.lon, checked.lat, actor)
    return photo_view(row)


async def attach(conn: Conn, incident_id: int, shas: list[str], stage: str, actor: str,
                 now: float) -> int | None:
    """Record ``shas`` as ``stage`` evidence of the incident (its row lock held by the
    caller): one ``evidence`` case-log entry naming them, and their rows. Returns the
    entry's seq (None when there are no photos). Only the actor's own uploads."""
    if not shas:
        return None
    shas = list(dict.fromkeys(shas))
    if len(shas) > MAX_PHOTOS_PER_STEP:
        raise InvalidInput(f"at most {MAX_PHOTOS_PER_STEP} photos per step",
                           code="photo.too_many")
    mine = await conn.fetch(
        "SELECT sha256 FROM photos WHERE sha256 = ANY($1::text[]) AND uploaded_by = $2",
        shas, actor)
    missing = set(shas) - {r["sha256"] for r in mine}
    if missing:
        raise InvalidInput(f"{len(missing)} photo(s) not uploaded by you: upload them first",
                           code="photo.unknown")
    state = await conn.fetchval("SELECT state FROM incidents WHERE id = $1", incident_id)
    if state is None:
        raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
    await store.append_log(conn, incident_id, EVIDENCE_ACTION, state, state, actor, now,
                           evidence_text(stage, shas))
    seq = int(await conn.fetchval("SELECT max(seq) FROM case_log WHERE incident_id = $1",
                                  incident_id))
    await conn.executemany(
        """INSERT INTO incident_photos (incident_id, sha256, stage, log_seq, added_by)
           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
        [(incident_id, sha, stage, seq, actor) for sha in shas])
    return seq


def evidence_text(stage: str, shas: list[str]) -> str:
    """The case-log reason of an evidence entry (hashed into the chain)."""
    return f"{stage} sha256 " + " ".join(shas)


async def _may_see(db: Querier, request: Request, sha: str) -> bool:
    p = principal_of(request)
    if p is None:
        return False
    if not p.is_field:
        # Staff read every case, hence every case's photos (not loose uploads).
        return bool(await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM incident_photos WHERE sha256 = $1)", sha))
    grids = await db.fetchval(
        "SELECT grids FROM field_phones WHERE name = $1", p.name) or []
    return bool(await db.fetchval(
        """SELECT EXISTS (SELECT 1 FROM photos WHERE sha256 = $1 AND uploaded_by = $2)
               OR EXISTS (SELECT 1 FROM incident_photos ip JOIN incidents i
                          ON i.id = ip.incident_id WHERE ip.sha256 = $1
                          AND (i.assigned_unit = $2 OR i.handler = $2
                               OR i.grid_id = ANY($3::text[])))""",
        sha, p.unit_id, list(grids)))


@router.get("/api/photos/{sha256}/{variant}")
async def serve(request: Request, hub: HubDep, sha256: Sha,
                variant: Annotated[str, PathParam(pattern="^(display|thumb)$")]) -> Response:
    if not await _may_see(hub.pool, request, sha256):
        # One answer for "no such photo" and "not yours": a phone learns nothing of others.
        raise Forbidden("no such photo, or not on a case you may see", code="photo.forbidden")
    path = _path(photo_dir(hub.settings), sha256, VARIANTS[variant])
    if not path.exists():
        raise NotFound("the photo's file is missing", code="photo.file_missing")
    return FileResponse(path, media_type="image/jpeg",
                        headers={"Cache-Control": CACHE_CONTROL})


async def evidence(pool: Querier, root: Path, incident_id: int) -> list[dict[str, Any]]:
    """A case's photos, each checked: its file still hashes to its name, and the case-log
    entry it cites names it (``intact``)."""
    rows = await pool.fetch(
        """SELECT ip.stage, ip.log_seq, ip.added_by, ip.added_at, p.*, l.reason AS cited,
                  l.action AS cited_action
           FROM incident_photos ip JOIN photos p ON p.sha256 = ip.sha256
           LEFT JOIN case_log l ON l.incident_id = ip.incident_id AND l.seq = ip.log_seq
           WHERE ip.incident_id = $1 ORDER BY ip.log_seq, ip.added_at""", incident_id)
    out = []
    for r in rows:
        v = photo_view(r)
        cited = r["cited"] or ""
        file_ok = await asyncio.to_thread(file_sha256, root, r["sha256"]) == r["sha256"]
        log_ok = (r["cited_action"] == EVIDENCE_ACTION
                  and cited.startswith(r["stage"] + " sha256 ")
                  and r["sha256"] in cited.split())
        v.pop("cited", None)
        v.pop("cited_action", None)
        v.update(file_ok=file_ok, log_ok=log_ok, intact=file_ok and log_ok)
        out.append(v)
    return out


@router.get("/api/incidents/{incident_id}/photos")
async def case_photos(request: Request, hub: HubDep, incident_id: RowId) -> dict[str, Any]:
    """Before (report) and after (feedback, verify) photos of a case, each checked."""
    p = principal_of(request)
    row = await hub.pool.fetchrow(
        "SELECT assigned_unit, handler FROM incidents WHERE id = $1", incident_id)
    if row is None:
        raise NotFound(f"incident {incident_id} not found", code="incident.not_found")
    if p is not None and p.is_unit and p.unit_id not in (row["assigned_unit"], row["handler"]):
        raise Forbidden("this incident is not assigned to your unit",
                        code="auth.not_your_incident")
    photos = await evidence(hub.pool, photo_dir(hub.settings), incident_id)
    return {"incident_id": incident_id, "photos": photos,
            "intact": all(ph["intact"] for ph in photos), "checked_at": clock.now()}


# Uploads never attached to a case step (the user discarded the action) are kept this long:
# as long as a queued action may still arrive (Settings.field_idempotency_keep_s is 7 days).
LOOSE_KEEP_S = 7 * 86400.0


def _unlink(root: Path, sha: str) -> None:
    for suffix in (".orig", ".jpg", ".thumb.jpg"):
        _path(root, sha, suffix).unlink(missing_ok=True)


async def purge(pool: Querier, settings: Settings) -> int:
    """Retention (a scheduled job): photos whose cases all ended (archived or cancelled)
    more than ``photo_retention_days`` ago, and uploads never attached after
    ``LOOSE_KEEP_S``. The case log keeps their hashes. Returns how many went."""
    days = settings.photo_retention_days
    rows = await pool.fetch(
        """SELECT p.sha256 FROM photos p
           WHERE (NOT EXISTS (SELECT 1 FROM incident_photos ip WHERE ip.sha256 = p.sha256)
                  AND p.uploaded_at < now() - make_interval(secs => $1))
              OR ($2 > 0 AND EXISTS (SELECT 1 FROM incident_photos ip WHERE ip.sha256 = p.sha256)
                  AND NOT EXISTS (
                      SELECT 1 FROM incident_photos ip JOIN incidents i ON i.id = ip.incident_id
                      WHERE ip.sha256 = p.sha256 AND (i.state NOT IN ('archived', 'cancelled')
                          OR i.updated_at > now() - make_interval(days => $2))))""",
        LOOSE_KEEP_S, days)
    shas = [r["sha256"] for r in rows]
    if not shas:
        return 0
    root = photo_dir(settings)
    for sha in shas:
        await asyncio.to_thread(_unlink, root, sha)
    await pool.execute("DELETE FROM incident_photos WHERE sha256 = ANY($1::text[])", shas)
    await pool.execute("DELETE FROM photos WHERE sha256 = ANY($1::text[])", shas)
    return len(shas)
