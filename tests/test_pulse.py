"""The demo's pulse at the level of the pure simulator code: a seeded run of the crews'
behaviour shows late accepts, declines with reasons, category-dependent handling times and
failed verifications; the history's plan draws the same behaviour; the citizens' reports and
the fleet's wire formats are what the hub decodes."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from dispatch.service import ACCEPT_TIMEOUT_S
from hub import town as town_files
from hub.open311_services import SERVICES
from ingest import wire
from simulators import citizens, crew_behaviour, fleet_formats, history_plan
from simulators.crew_behaviour import CrewBehaviour

ROOT = Path(__file__).resolve().parents[1]
TOWN = json.loads((ROOT / "simulators" / "data" / "xuxiake.json").read_text("utf-8"))
RUNS = 2000  # answers per seeded run: every behaviour shows many times at its odds


def test_a_seeded_run_shows_late_accepts_and_declines_with_reasons() -> None:
    b = CrewBehaviour(42)
    timeout = ACCEPT_TIMEOUT_S[2]
    answers = [b.answer(timeout) for _ in range(RUNS)]
    late = [a for a in answers if a.late]
    declines = [a for a in answers if a.decline_reason is not None]
    on_time = [a for a in answers if not a.late and a.decline_reason is None]
    # the odds hold, roughly (2,000 draws: a few points either way)
    assert 0.07 < len(late) / RUNS < 0.13
    assert 0.05 < len(declines) / RUNS < 0.11
    # a late answer comes after the hub's time-out: the hub has escalated by then
    assert all(a.delay_s > timeout for a in late)
    assert all(a.delay_s < timeout for a in on_time + declines)
    # every decline says why, in the crews' words
    assert {a.decline_reason for a in declines} == set(crew_behaviour.DECLINE_REASONS)
    # the same seed gives the same run
    again = CrewBehaviour(42)
    assert [again.answer(timeout) for _ in range(RUNS)] == answers


def test_handling_time_depends_on_the_category() -> None:
    b = CrewBehaviour(7)
    times = {c: [b.handling_s(c) for _ in range(300)] for c in crew_behaviour.HANDLING_S}
    for c, xs in times.items():
        lo, hi = crew_behaviour.HANDLING_S[c]
        assert lo <= min(xs) and max(xs) <= hi, c
    mean = {c: statistics.fmean(xs) for c, xs in times.items()}
    # moving a stall is minutes, stopping an illegal building an afternoon
    assert mean["city_order"] * 5 < mean["illegal_construction"]
    assert mean["noise"] < mean["gas_leak"] < mean["flood_risk"]
    unknown = [b.handling_s("no_such_category") for _ in range(50)]
    assert all(crew_behaviour.DEFAULT_HANDLING_S[0] <= x <= crew_behaviour.DEFAULT_HANDLING_S[1]
               for x in unknown)


def test_verification_fails_now_and_then_with_a_reason() -> None:
    b = CrewBehaviour(3)
    verdicts = [b.verification() for _ in range(RUNS)]
    fails = [v for v in verdicts if v is not None]
    assert 0.09 < len(fails) / RUNS < 0.15
    assert set(fails) == set(crew_behaviour.VERIFY_FAIL_REASONS)
    asks = [b.extension() for _ in range(RUNS)]
    assert 0.04 < sum(a is not None for a in asks) / RUNS < 0.10


def _plan(seed: int, days: float = 3.0, per_day: float = 30.0) -> list[history_plan.CaseStory]:
    rules = [r for r in town_files.read_rules(ROOT / "simulators" / "data" / "rules.toml")
             if r.get("incident_category")]
    services = [{"code": s.code, "name": s.name, "qualification": s.qualification,
                 "priority": s.priority} for s in SERVICES.values()]
    now = 1_790_000_000.0
    return history_plan.plan_cases(town=TOWN, rules=rules, services=services,
                                   since=now - days * 86400, until=now,
                                   cases_per_day=per_day, seed=seed,
                                   accept_timeout_s=ACCEPT_TIMEOUT_S)


def test_history_plan_draws_every_kind_of_story() -> None:
    stories = _plan(5)
    assert len(stories) == 90
    assert [s.opened_at for s in stories] == sorted(s.opened_at for s in stories)
    assert {s.source for s in stories} == {"alarm", "open311", "hotline", "grid_worker",
                                           "operator"}
    assert any(a.late for s in stories for a in s.answers)          # escalations
    assert any(a.decline_reason for s in stories for a in s.answers)  # declines
    assert any(s.fail_reasons for s in stories)                      # rework
    assert all(len(s.rounds) == len(s.fail_reasons) + 1 for s in stories)
    assert any(s.extension for s in stories)
    assert any(s.shelving for s in stories)
    # the last answer of every story is an acceptance in time
    assert all(not s.answers[-1].late and s.answers[-1].decline_reason is None
               for s in stories)
    # alarms come from a device of the rule's model; citizens' reports name a grid
    models = {d["id"]: d["model"] for d in TOWN["devices"]}
    assert all(models[s.device_id] for s in stories if s.source == "alarm" and s.device_id)
    assert all(s.grid for s in stories if s.source != "alarm")


def test_history_plan_is_the_same_whatever_the_time_of_day() -> None:
    a = _plan(9)
    rules = [r for r in town_files.read_rules(ROOT / "simulators" / "data" / "rules.toml")
             if r.get("incident_category")]
    services = [{"code": s.code, "name": s.name, "qualification": s.qualification,
                 "priority": s.priority} for s in SERVICES.values()]
    now = 1_790_000_000.0 + 5 * 3600  # five hours later in the day
    b = history_plan.plan_cases(town=TOWN, rules=rules, services=services,
                                since=now - 3 * 86400, until=now, cases_per_day=30.0,
                                seed=9, accept_timeout_s=ACCEPT_TIMEOUT_S)
    key = [(s.source, s.category, s.answers, s.rounds) for s in a]
    assert sorted(key, key=repr) == sorted(
        [(s.source, s.category, s.answers, s.rounds) for s in b], key=repr)
    # reports follow the town's day: more in the morning peak than before dawn
    hours = [int(((s.opened_at + history_plan.TOWN_UTC_OFFSET_S) % 86400) // 3600)
             for s in _plan(11, days=14)]
    assert sum(9 <= h <= 10 for h in hours) > 3 * sum(2 <= h <= 3 for h in hours)


def test_citizens_report_what_the_hub_takes() -> None:
    r = citizens.Citizens(TOWN, seed=4, every_s=60.0)
    reports = [r.next_report() for _ in range(200)]
    kinds = {x.channel for x in reports}
    assert kinds == {"open311", "hotline"}
    for x in reports:
        svc = SERVICES[x.service_code]
        if x.channel == "open311":
            form = x.open311_form("KEY")
            assert form["service_code"] == svc.code and form["api_key"] == "KEY"
            for a in svc.attributes:  # every required attribute answered with a listed value
                if a.required and a.values:
                    assert form[f"attribute[{a.code}]"] in {v for v, _ in a.values}
        else:
            body = x.hotline_body()
            assert body["source"] == "hotline"
            assert body["qualification"] == svc.qualification
            assert body["category"] == svc.code
    # one report every `every_s` on average
    gaps = [r.gap_s() for _ in range(RUNS)]
    assert statistics.fmean(gaps) == pytest.approx(60.0, rel=0.1)
    # an operator registers most, cancels a few duplicates with a reason
    verdicts = [r.operator_verdict() for _ in range(RUNS)]
    cancels = [v for v in verdicts if v[0] == "cancel"]
    assert 0 < len(cancels) < RUNS * 0.1 and all(v[2] for v in cancels)


def test_fleet_formats_decode_to_the_same_readings() -> None:
    now = time.time()
    kinds: dict[str, int] = {}
    for d in TOWN["devices"]:
        w = fleet_formats.device_wire(d)
        kinds[w.kind] = kinds.get(w.kind, 0) + 1
        decoded: Any = wire.decode(w.topic, w.encode(now, {"m1": 1.5, "m2": 2.0}), now)
        assert not isinstance(decoded, wire.DecodeError), (w.topic, decoded)
        assert sorted((r.device_id, r.metric, r.value) for r in decoded.readings) == [
            (d["id"], "m1", 1.5), (d["id"], "m2", 2.0)]
    assert kinds["senml"] > 10 and kinds["native"] > kinds["senml"]
    phones: dict[str, int] = {}
    for u in TOWN["units"]:
        w2 = fleet_formats.unit_wire(u["id"])
        phones[w2.kind] = phones.get(w2.kind, 0) + 1
        decoded = wire.decode(w2.topic, w2.encode(now, 31.8, 120.4, 3.0, 90.0, 5.0), now)
        assert not isinstance(decoded, wire.DecodeError), (w2.topic, decoded)
        (p,) = decoded.positions
        assert (p.unit_id, p.lat, p.lon) == (u["id"], 31.8, 120.4)
        assert p.speed == pytest.approx(3.0, abs=0.2)
    assert phones["owntracks"] > 5 and phones["native"] > phones["owntracks"]
