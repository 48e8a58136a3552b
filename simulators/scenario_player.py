"""Playing a scenario against a running hub: devices over MQTT, reports and actions over
HTTP, each step's expectations polled through the API (``Player``)."""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ingest import wire
from simulators.crews import FIELD_TOKEN_ENV, api_headers
from simulators.mqtt_pub import Publisher
from simulators.scenario_checks import _devs, _error_text, _ref, _sleep_until, _View
from simulators.scenario_model import (
    CLEANUP_REASON,
    CLEANUP_ROUNDS,
    GPS_REPEAT_S,
    MIN_WAIT_S,
    POLL_S,
    PROGRAM_KINDS,
    SETTLE_S,
    Expectation,
    Scenario,
    ScenarioError,
    Step,
    fmt_tau,
)
from simulators.scenario_programs import (
    apply_program,
    encode_batch,
    initial_readings,
    make_programs,
)
from simulators.scenario_selectors import _Town, resolve_place

log = logging.getLogger("simulators.scenario")


# ---------------------------------------------------------------- playing

@dataclass
class PlayResult:
    scenario: str
    time_scale: float
    log: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    passed: int = 0
    skipped: int = 0
    published: int = 0
    elapsed_s: float = 0.0
    cases: dict[str, int] = field(default_factory=dict)  # report label -> incident id

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.failures)} FAILED"
        return (f"scenario {self.scenario}: {verdict} ({self.passed} expectations held, "
                f"{self.skipped} skipped; {self.published} messages; "
                f"{self.elapsed_s:.1f} s at x{self.time_scale:g})")

    def report(self) -> str:
        lines = [*self.log, self.summary()]
        lines += [f"  FAILED {f}" for f in self.failures]
        return "\n".join(lines)


class Player:
    """Plays one scenario against a running hub.

    ``alongside``: the living town runs too (its patrols own the units: ``gps`` steps and
    ``staged_only`` expectations are skipped). ``crews_live``: simulated crews answer
    dispatches (crew actions are left to them). ``publisher`` is started by the caller.
    """

    def __init__(self, scenario: Scenario, *, hub_url: str, publisher: Publisher,
                 time_scale: float = 1.0, alongside: bool = False, crews_live: bool = False,
                 token: str | None = None, field_token: str | None = None) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        # API token: ``token``, else $HUB_API_TOKEN (simulators/crews.py says which role);
        # crew actions under the crews' token where one is given (FIELD_TOKEN_ENV).
        self.headers = api_headers(token)
        field = field_token or os.environ.get(FIELD_TOKEN_ENV)
        self.field_headers = api_headers(field) if field else self.headers
        self.sc = scenario
        self.town = _Town(scenario.town)
        self.hub_url = hub_url.rstrip("/")
        self.pub = publisher
        self.time_scale = time_scale
        self.alongside = alongside
        self.crews_live = crews_live
        self.programs = make_programs(scenario)
        self.labels: dict[str, int] = {}
        self.staged: dict[str, tuple[float, float]] = {}
        self.base_alarm = 0
        self.base_incident = 0
        self.t0 = time.time()
        self.result = PlayResult(scenario.name, time_scale)
        self.client: httpx.AsyncClient | None = None
        self._o311_key = ""

    # ---- clocks
    def tau(self) -> float:
        return (time.time() - self.t0) * self.time_scale

    def wall_at(self, tau: float) -> float:
        return self.t0 + tau / self.time_scale

    def note(self, text: str, tau: float | None = None) -> None:
        line = f"[{self.sc.name} {fmt_tau(self.tau() if tau is None else tau)}] {text}"
        self.result.log.append(line)
        log.info("%s", line)

    @property
    def owned(self) -> frozenset[str]:
        return frozenset(self.sc.devices)

    # ---- the play
    async def play(self) -> PlayResult:
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=self.hub_url, timeout=10.0,
                                     headers=self.headers) as client:
            self.client = client
            await self.begin()
            self.note(f"{self.sc.title} — {len(self.sc.steps)} steps over "
                      f"{fmt_tau(self.sc.duration)}, {len(self.programs)} devices, "
                      f"x{self.time_scale:g}" + (" alongside the town" if self.alongside
                                                 else ""), 0.0)
            for st in self.sc.steps:  # what holds from the start goes out with the first reading
                if st.at <= 0 and st.kind in PROGRAM_KINDS:
                    apply_program(self.sc, self.programs, st)
            await self._publish_initial()
            tasks = [asyncio.create_task(self._devices(), name=f"scenario-{self.sc.name}-dev"),
                     asyncio.create_task(self._gps(), name=f"scenario-{self.sc.name}-gps")]
            try:
                for st in self.sc.steps:
                    await _sleep_until(self.wall_at(st.at))
                    await self._run_step(st)
                await _sleep_until(self.wall_at(self.sc.duration))
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        self.client = None
        self.result.elapsed_s = time.monotonic() - started
        self.result.cases = dict(self.labels)
        self.note(self.result.summary())
        return self.result

    async def begin(self) -> None:
        """Remember where the hub's alarm and incident ids stand: expectations only look at
        what the scenario caused. Starts the scenario clock."""
        alarms = await self._get("/api/alarms", state="all", limit=1)
        incidents = await self._get("/api/incidents", state="all", limit=1)
        self.base_alarm = max((int(a["id"]) for a in alarms), default=0)
        self.base_incident = max((int(i["id"]) for i in incidents), default=0)
        self.t0 = time.time()

    async def _publish_initial(self) -> None:
        """Per owned device one message: its history (or a few primed normal readings) and
        its reading at the start, in device-time order, so the hub sees no gap. Alongside a
        town the hub may already hold newer readings: older ones are not sent."""
        hist = {d for h in self.sc.history for d in h.devices}
        hist_sent = 0
        for d, readings in initial_readings(self.sc, self.programs, self.t0).items():
            if self.alongside and len(readings) > 1:
                newest = await self._hub_newest(d)
                if newest is not None and readings[0][0] <= newest:
                    kept = [r for r in readings if r[0] > newest]
                    if d in hist:
                        self.note(f"history of {d}: the hub already has readings up to "
                                  f"{time.strftime('%H:%M:%S', time.localtime(newest))}; "
                                  f"{len(readings) - len(kept)} older readings not sent "
                                  "(its rules would not use them)", 0.0)
                    readings = kept
            if d in hist:
                hist_sent += sum(1 for r in readings if r[0] < self.t0)
            if readings:
                await self.pub.publish(wire.telemetry_topic(d), encode_batch(readings))
                self.result.published += 1
        if self.sc.history:
            self.note(f"history: {hist_sent} back-dated readings for {len(hist)} devices",
                      0.0)

    async def _devices(self) -> None:
        heap = [(self.t0 + p.interval_s / self.time_scale, d) for d, p in self.programs.items()]
        heapq.heapify(heap)
        while heap:
            due, d = heap[0]
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            heapq.heappop(heap)
            prog = self.programs[d]
            now = time.time()
            if not prog.offline:
                values = prog.values((now - self.t0) * self.time_scale, now)
                await self.pub.publish(wire.telemetry_topic(d),
                                       wire.encode_telemetry(round(now, 3), values))
                prog.sent += 1
                self.result.published += 1
            nxt = due + prog.interval_s / self.time_scale
            heapq.heappush(heap, (max(nxt, now), d))

    async def _gps(self) -> None:
        while True:
            await asyncio.sleep(GPS_REPEAT_S)
            for uid in list(self.staged):
                await self._fix(uid)

    async def _fix(self, uid: str) -> None:
        lon, lat = self.staged[uid]
        await self.pub.publish(wire.gps_topic(uid), wire.encode_gps(
            round(time.time(), 3), lat, lon, 0.0, None, 5.0))
        self.result.published += 1

    # ---- steps
    async def _run_step(self, st: Step) -> None:
        text = f"{st.note}" if st.note else (st.kind or "check")
        if st.kind in PROGRAM_KINDS:
            if st.at > 0:
                apply_program(self.sc, self.programs, st)
            self.note(f"{text} [{st.kind}: {_devs(st.spec['devices'])}]", st.at)
        elif st.kind is not None:
            await getattr(self, f"_do_{st.kind}")(st, text)
        elif st.note:
            self.note(text, st.at)
        if st.expect:
            await self._expect(st)

    async def _do_report(self, st: Step, text: str) -> None:
        s = st.spec
        lon, lat = resolve_place(self.town, s["place"])
        if s["via"] == "open311":
            form = {"service_code": s["service_code"], "lat": str(lat), "long": str(lon),
                    "description": s["description"] or s["service_code"]}
            for k in ("first_name", "phone"):
                if k in s:
                    form[k] = s[k]
            form["api_key"] = await self._open311_key()
            # A list value is sent as the field repeated (a multivaluelist's answers).
            fields: dict[str, Any] = {**form, **{f"attribute[{k}]": vs for k, vs in
                                                 s["attributes"].items()}}
            r = await self._http("POST", "/open311/v2/requests.json", data=fields)
            iid = int(r.json()[0]["service_request_id"]) if r.status_code == 201 else None
        else:
            body = {k: s[k] for k in ("category", "qualification", "priority", "title",
                                      "description", "source", "reporter")}
            r = await self._http("POST", "/api/incidents", json={**body, "lon": lon,
                                                                 "lat": lat})
            iid = int(r.json()["id"]) if r.status_code == 201 else None
        if iid is None:
            self._fail(st, f"report {s['as']!r} refused: HTTP {r.status_code} {r.text[:200]}")
            return
        self.labels[s["as"]] = iid
        self.note(f"{text} [report via {s['via']} -> case #{iid} @{s['as']}]", st.at)

    async def _do_action(self, st: Step, text: str) -> None:
        s = st.spec
        if s["crew"] and self.crews_live:
            self.note(f"{text} [{s['action']}: left to the simulated crews]", st.at)
            return
        iid = await self._case_id(s["case"])
        if iid is None:
            self._fail(st, f"action {s['action']}: no case {_ref(s['case'])} yet")
            return
        actor = s["actor"]
        if actor == "@assigned":
            inc = (await self._get(f"/api/incidents/{iid}"))["incident"]
            actor = inc.get("assigned_unit")
            if not actor:
                self._fail(st, f"action {s['action']} on case #{iid}: no unit assigned "
                           f"(state {inc.get('state')})")
                return
        body = {"action": s["action"]}
        if "reason" in s:
            body["reason"] = s["reason"]
        r = await self._http("POST", f"/api/incidents/{iid}/actions", json=body,
                             headers=self.field_headers if s["crew"] else self.headers)
        if r.status_code != 200:
            msg = f"{s['action']} by {actor} on case #{iid} refused: HTTP {r.status_code} " \
                  f"{_error_text(r)}"
            if self.alongside and r.status_code in (409, 422):
                self.note(f"{text} [{msg}; someone moved the case first]", st.at)
                return
            self._fail(st, msg)
            return
        self.note(f"{text} [{s['action']} by {actor}: case #{iid} -> {r.json().get('state')}]",
                  st.at)

    async def _do_ack(self, st: Step, text: str) -> None:
        s = st.spec
        alarms = [a for a in await self._alarms() if a["rule_id"] == s["alarm"]
                  and a["state"] == "active"
                  and (s["devices"] is None or a["device_id"] in s["devices"])]
        for a in alarms:
            r = await self._http("POST", f"/api/alarms/{a['id']}/ack")
            if r.status_code != 200:
                self._fail(st, f"ack of alarm #{a['id']} refused: HTTP {r.status_code} "
                           f"{_error_text(r)}")
        self.note(f"{text} [ack {len(alarms)} {s['alarm']} alarm(s) by {s['by']}]", st.at)

    async def _do_gps(self, st: Step, text: str) -> None:
        if self.alongside:
            self.note(f"{text} [gps skipped: the town's patrols move the units]", st.at)
            return
        for uid in st.spec["units"]:
            self.staged[uid] = resolve_place(self.town, st.spec["place"], uid)
            await self._fix(uid)
        self.note(f"{text} [gps: {', '.join(st.spec['units'])}]", st.at)

    # ---- expectations
    async def _expect(self, st: Step) -> None:
        active = [e for e in st.expect if not (e.staged_only and self.alongside)]
        skipped = len(st.expect) - len(active)
        positives = [e for e in active if not e.absent]
        absents = [e for e in active if e.absent]
        deadline = time.monotonic() + max(MIN_WAIT_S, st.within / self.time_scale)
        failures = await self.check(positives)
        while failures and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            failures = await self.check(positives)
        if absents:
            await asyncio.sleep(SETTLE_S)
            failures += await self.check(absents)
        held = len(active) - len(failures)
        self.result.passed += held
        self.result.skipped += skipped
        for f in failures:
            self._fail(st, f)
        self.note(f"expect: {held}/{len(active)} held" + (f", {skipped} skipped (staged "
                                                           "only)" if skipped else "")
                  + ("" if not failures else " — " + "; ".join(failures)))

    def _fail(self, st: Step, message: str) -> None:
        where = f"{self.sc.name} {st.label}" + (f" '{st.note}'" if st.note else "")
        self.result.failures.append(f"{where}: {message}")

    async def check(self, expectations: Sequence[Expectation]) -> list[str]:
        """Query the hub once and return one message per expectation that does not hold."""
        if not expectations:
            return []
        if self.client is None:
            async with httpx.AsyncClient(base_url=self.hub_url, timeout=10.0,
                                     headers=self.headers) as client:
                self.client = client
                try:
                    return await self.check(expectations)
                finally:
                    self.client = None
        view = _View(self, await self._alarms(), await self._incidents())
        if any(e.kind == "case" for e in expectations):
            view.units = {u["id"]: u for u in await self._get("/api/units")}
        if any(e.spec.get("in_snapshot") for e in expectations):
            snap = await self._get("/api/snapshot")
            view.snapshot_alarms = {int(a["id"]) for a in snap.get("alarms", [])}
        out = []
        for e in expectations:
            msg = await view.check(e)
            if msg:
                out.append(f"{e.describe()}: {msg}")
        return out

    # ---- cleanup
    async def cleanup(self) -> int:
        """Cancel the cases the scenario caused (its reports, and cases its devices' alarms
        opened), taking units off them, and clear its devices' open alarms: the hub is
        ready for the next story. Returns the number of cases cancelled."""
        async with httpx.AsyncClient(base_url=self.hub_url, timeout=10.0,
                                     headers=self.headers) as client:
            self.client = client
            try:
                return await self._cleanup()
            finally:
                self.client = None

    async def _cleanup(self) -> int:
        grids = {self.town.devices[d]["grid"] for d in self.owned}
        mine: set[int] = set(self.labels.values())
        for a in await self._alarms():
            if a.get("incident_id") and (a["device_id"] in self.owned):
                mine.add(int(a["incident_id"]))
        cancelled = 0
        for _ in range(CLEANUP_ROUNDS):
            pending = False
            for iid in sorted(mine):
                inc = (await self._get(f"/api/incidents/{iid}"))["incident"]
                state = inc["state"]
                action = {"reported": "cancel", "registered": "cancel", "dispatched": "cancel",
                          "shelved": "cancel", "accepted": "withdraw",
                          "handling": "shelve"}.get(state)
                if action is None:
                    continue
                pending = True
                r = await self._http("POST", f"/api/incidents/{iid}/actions", json={
                    "action": action, "reason": CLEANUP_REASON})
                if r.status_code == 200 and action == "cancel":
                    cancelled += 1
            if not pending:
                break
        for a in await self._alarms():
            if a["state"] != "cleared" and (a["device_id"] in self.owned or (
                    a.get("situation") and a.get("grid_id") in grids)):
                await self._http("POST", f"/api/alarms/{a['id']}/clear", json={
                    "reason": CLEANUP_REASON})
        self.note(f"cleanup: {cancelled} case(s) cancelled")
        return cancelled

    # ---- hub access
    async def _open311_key(self) -> str:
        """An Open311 API key for the player, issued with its (admin) token; an earlier
        player's key of the same scenario is revoked first."""
        if self._o311_key:
            return self._o311_key
        # One application per scenario: players of different scenarios run side by side.
        app = ("scenario-" + re.sub(r"[^A-Za-z0-9._-]", "_", self.sc.name))[:48]
        r = await self._http("POST", "/api/open311/keys", json={"app_name": app})
        if r.status_code == 409:
            for k in (await self._get("/api/open311/keys")):
                if k["app_name"] == app and k["revoked_at"] is None:
                    await self._http("DELETE", f"/api/open311/keys/{k['key_id']}")
            r = await self._http("POST", "/api/open311/keys", json={"app_name": app})
        if r.status_code != 201:
            raise ScenarioError(f"cannot get an Open311 API key ({r.status_code}): Open311 "
                                "reports need the player's token to be an admin's")
        self._o311_key = str(r.json()["api_key"])
        return self._o311_key

    async def _http(self, method: str, url: str, **kw: Any) -> httpx.Response:
        assert self.client is not None
        return await self.client.request(method, url, **kw)

    async def _get(self, url: str, **params: Any) -> Any:
        r = await self._http("GET", url, params=params or None)
        r.raise_for_status()
        return r.json()

    async def _alarms(self) -> list[dict[str, Any]]:
        rows = await self._get("/api/alarms", state="all", limit=1000)
        return [a for a in rows if int(a["id"]) > self.base_alarm]

    async def _incidents(self) -> list[dict[str, Any]]:
        rows = await self._get("/api/incidents", state="all", limit=1000)
        return [i for i in rows if int(i["id"]) > self.base_incident]

    async def _hub_newest(self, device_id: str) -> float | None:
        r = await self._http("GET", f"/api/devices/{device_id}/latest")
        if r.status_code != 200:
            return None
        return max((float(m["ts"]) for m in r.json()["metrics"].values()), default=None)

    async def _case_id(self, ref: Mapping[str, Any]) -> int | None:
        if "label" in ref:
            return self.labels.get(ref["label"])
        cases = [i for i in await self._incidents() if i["category"] == ref["category"]
                 and (ref["grids"] is None or i["grid_id"] in ref["grids"])]
        return max((int(i["id"]) for i in cases), default=None)
