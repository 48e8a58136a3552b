"""The case state machine and the case log's hash chain (pure)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch.workflow import (
    ACTIONS,
    GENESIS_HASH,
    REPORT_ACTION,
    STATES,
    CaseState,
    TransitionError,
    allowed_actions,
    apply,
    canonical_entry,
    entry_hash,
    replay,
    verify_chain,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_750_000_000.0

# The nine-step loop, with who does what.
HAPPY_PATH: list[tuple[str, str, str]] = [
    ("register", "op1", "registered"),
    ("dispatch", "op1", "dispatched"),
    ("accept", "squad-3", "accepted"),
    ("start_handling", "squad-3", "handling"),
    ("give_feedback", "squad-3", "feedback"),
    ("verify_ok", "supervisor-2", "verified"),
    ("close", "op1", "closed"),
    ("evaluate", "supervisor-2", "evaluated"),
    ("archive", "op1", "archived"),
]


def at(state: str, **kw: Any) -> CaseState:
    return CaseState(state=state, **kw)


def run(steps: list[tuple[str, str, str | None]], case: CaseState | None = None) -> CaseState:
    case = case or CaseState()
    for k, (action, actor, reason) in enumerate(steps):
        case = apply(case, action, actor, T0 + 60 * (k + 1), reason)
    return case


def test_pages_catalog_names_every_state_action_and_flag() -> None:
    """UI text lives in the pages' catalog (translated by Babel), not in this core: every
    state, action and flag the core can produce has a key there."""
    catalog = (ROOT / "frontend" / "templates" / "_i18n_js.html").read_text(encoding="utf-8")
    keys = set(re.findall(r'"((?:state|action|flag)\.[a-z_]+)"', catalog))
    assert {f"state.{s}" for s in STATES} <= keys
    assert {f"action.{a}" for a in (*ACTIONS, REPORT_ACTION)} <= keys
    assert {f"flag.{f}" for f in ("rework", "extension", "paused")} <= keys


@pytest.mark.parametrize(
    ("step", "action", "actor", "to_state"), [(k, *s) for k, s in enumerate(HAPPY_PATH)]
)
def test_happy_path_step(step: int, action: str, actor: str, to_state: str) -> None:
    case = run([(a, who, None) for a, who, _ in HAPPY_PATH[:step]])
    assert action in allowed_actions(case)
    after = apply(case, action, actor, T0 + 1e4)
    assert after.state == to_state
    assert after.updated_at == T0 + 1e4
    assert case.state != to_state  # the input is untouched (frozen value)


def test_happy_path_end_to_end() -> None:
    case = run([(a, who, None) for a, who, _ in HAPPY_PATH])
    assert case.state == "archived"
    assert case.handler == "squad-3" and case.feedback_by == "squad-3"
    assert case.rework_count == 0 and case.pauses == () and case.flags == ()
    assert allowed_actions(case) == ()


@pytest.mark.parametrize(
    ("case", "action", "reason", "code"),
    [
        (at("reported"), "dispatch", None, "case.illegal_transition"),
        (at("reported"), "accept", None, "case.illegal_transition"),
        (at("registered"), "accept", None, "case.illegal_transition"),
        (at("dispatched"), "give_feedback", None, "case.illegal_transition"),
        (at("accepted"), "give_feedback", None, "case.illegal_transition"),
        (at("handling"), "close", None, "case.illegal_transition"),
        (at("handling"), "verify_ok", None, "case.illegal_transition"),
        (at("feedback"), "close", None, "case.illegal_transition"),
        (at("verified"), "archive", None, "case.illegal_transition"),
        (at("closed"), "archive", None, "case.illegal_transition"),
        (at("archived"), "reopen", None, "case.illegal_transition"),
        (at("archived"), "cancel", "dup", "case.illegal_transition"),
        (at("cancelled"), "register", None, "case.illegal_transition"),
        (at("handling"), "cancel", "dup", "case.illegal_transition"),
        (at("closed"), "shelve", "no budget", "case.illegal_transition"),
        (at("registered"), "reopen", None, "case.illegal_transition"),
        (at("handling"), "approve_extension", None, "case.illegal_transition"),
        (at("handling"), "resume", None, "case.illegal_transition"),
        (
            at("handling", extension_requested=True),
            "request_extension",
            "again",
            "case.illegal_transition",
        ),
        (at("handling", paused_since=T0), "request_extension", "more", "case.illegal_transition"),
        (at("feedback"), "request_extension", "late", "case.illegal_transition"),
        (at("handling"), "fly", None, "case.unknown_action"),
        (at("handling"), "", None, "case.unknown_action"),
        (at("handling"), "shelve", None, "case.reason_required"),
        (at("handling"), "shelve", "", "case.reason_required"),
        (at("handling"), "shelve", "   ", "case.reason_required"),
        (at("registered"), "cancel", None, "case.reason_required"),
        (at("dispatched"), "decline", None, "case.reason_required"),
        (at("handling"), "request_extension", None, "case.reason_required"),
        (at("feedback", handler="squad-3"), "verify_fail", None, "case.reason_required"),
        (at("handling", extension_requested=True), "reject_extension", "", "case.reason_required"),
    ],
)
def test_illegal_transitions(case: CaseState, action: str, reason: str | None, code: str) -> None:
    with pytest.raises(TransitionError) as err:
        apply(case, action, "someone", T0, reason)
    assert err.value.code == code
    assert err.value.message
    if code == "case.illegal_transition":
        assert action not in allowed_actions(case)


def test_actor_is_required() -> None:
    for actor in ("", "  "):
        with pytest.raises(TransitionError) as err:
            apply(CaseState(), "register", actor, T0)
        assert err.value.code == "case.actor_required"


def test_unknown_action_wins_over_other_checks() -> None:
    with pytest.raises(TransitionError) as err:
        apply(at("archived"), "explode", "", T0)
    assert err.value.code == "case.unknown_action"


@pytest.mark.parametrize("verifier", ["squad-3", "squad-3b"])
@pytest.mark.parametrize("action", ["verify_ok", "verify_fail"])
def test_verifier_is_not_the_handler(verifier: str, action: str) -> None:
    # squad-3 accepted; squad-3b (a member of the squad) filed the feedback.
    case = at("feedback", handler="squad-3", feedback_by="squad-3b")
    with pytest.raises(TransitionError) as err:
        apply(case, action, verifier, T0, "not done")
    assert err.value.code == "case.verifier_is_handler"
    assert apply(case, action, "supervisor-2", T0, "not done").state in ("verified", "handling")


@pytest.mark.parametrize("action", ["verify_ok", "verify_fail"])
def test_verifier_is_not_a_member_of_the_handling_unit(action: str) -> None:
    # The route supplies the known members of the unit (its phones' token names).
    case = at("feedback", handler="SQ-01", feedback_by="SQ-01")
    with pytest.raises(TransitionError) as err:
        apply(case, action, "sq01-phone", T0, "not done", handler_members={"sq01-phone"})
    assert err.value.code == "case.verifier_is_handler"
    assert apply(case, action, "op-li", T0, "x", handler_members={"sq01-phone"}).state in (
        "verified", "handling")


def test_extension_approved_by_someone_other_than_the_requester() -> None:
    case = apply(at("handling"), "request_extension", "sup-wang", T0, "waiting for permit")
    assert case.extension_requested_by == "sup-wang"
    with pytest.raises(TransitionError) as err:
        apply(case, "approve_extension", "sup-wang", T0 + 1)
    assert err.value.code == "case.approver_is_requester"
    approved = apply(case, "approve_extension", "sup-zhao", T0 + 1)
    assert approved.extension_count == 1 and approved.extension_requested_by is None
    # the requester may still withdraw their own request by rejecting it
    assert apply(case, "reject_extension", "sup-wang", T0 + 1, "not needed after all"
                 ).extension_requested_by is None


def test_replay_does_not_refuse_recorded_identities() -> None:
    # A log written before identities were enforced still rebuilds (history is history).
    log = [{"action": a, "actor": "op1", "ts": T0 + k, "reason": "r"} for k, a in enumerate(
        ("register", "dispatch", "accept", "start_handling", "give_feedback", "verify_ok"))]
    assert replay(log).state == "verified"
    with pytest.raises(TransitionError):
        apply(replace(replay(log[:-1])), "verify_ok", "op1", T0 + 9)


def test_rework_counting() -> None:
    case = run([(a, who, None) for a, who, _ in HAPPY_PATH[:5]])
    assert case.state == "feedback"
    for n in (1, 2):
        case = apply(case, "verify_fail", "supervisor-2", T0 + 1000 * n, "litter still there")
        assert case.state == "handling" and case.rework_count == n
        assert "rework" in case.flags
        case = apply(case, "give_feedback", "squad-3", T0 + 1000 * n + 500)
    case = apply(case, "verify_ok", "supervisor-2", T0 + 5000)
    assert case.state == "verified" and case.rework_count == 2


def test_decline_goes_back_for_redispatch() -> None:
    case = apply(at("dispatched"), "decline", "squad-3", T0, "not our area")
    assert case.state == "registered" and case.handler is None
    assert "dispatch" in allowed_actions(case)


def test_shelve_pauses_and_reopen_resumes() -> None:
    case = apply(at("handling", handler="squad-3"), "shelve", "op1", T0, "needs county budget")
    assert case.state == "shelved" and case.paused_since == T0
    assert set(allowed_actions(case)) == {"reopen", "cancel"}
    case = apply(case, "reopen", "op1", T0 + 7200)
    assert case.state == "registered" and case.paused_since is None
    assert case.pauses == ((T0, T0 + 7200),)
    assert case.handler is None  # re-dispatched from scratch


def test_cancel_needs_reason_and_closes_an_open_pause() -> None:
    case = apply(at("registered"), "shelve", "op1", T0, "waiting")
    case = apply(case, "cancel", "op1", T0 + 60, "duplicate of INC-4")
    assert case.state == "cancelled" and case.pauses == ((T0, T0 + 60),)
    assert allowed_actions(case) == ()


def test_extension_pauses_the_clock() -> None:
    case = at("handling", handler="squad-3")
    case = apply(case, "request_extension", "squad-3", T0, "waiting for permit")
    assert case.extension_requested and case.paused_since is None
    assert {"approve_extension", "reject_extension"} <= set(allowed_actions(case))
    assert "request_extension" not in allowed_actions(case)
    case = apply(case, "approve_extension", "supervisor-2", T0 + 100)
    assert not case.extension_requested and case.extension_count == 1
    assert case.paused_since == T0 + 100 and "paused" in case.flags
    assert case.paused_s(T0 + 400) == 300
    assert case.all_pauses() == ((T0 + 100, None),)
    case = apply(case, "resume", "squad-3", T0 + 3700)
    assert case.paused_since is None and case.pauses == ((T0 + 100, T0 + 3700),)
    assert case.paused_s(T0 + 99999) == 3600
    assert "extension" in case.flags and "paused" not in case.flags


def test_feedback_ends_a_pause_and_reject_keeps_the_clock_running() -> None:
    case = at("handling", handler="squad-3", extension_requested=True)
    rejected = apply(case, "reject_extension", "supervisor-2", T0, "do it today")
    assert not rejected.extension_requested and rejected.paused_since is None
    assert rejected.extension_count == 0
    paused = apply(case, "approve_extension", "supervisor-2", T0)
    done = apply(paused, "give_feedback", "squad-3", T0 + 50)
    assert done.state == "feedback" and done.pauses == ((T0, T0 + 50),)


def test_state_change_clears_a_pending_request() -> None:
    case = at("handling", handler="squad-3", extension_requested=True)
    assert not apply(case, "give_feedback", "squad-3", T0).extension_requested


def test_bad_state_is_rejected() -> None:
    with pytest.raises(ValueError):
        CaseState(state="limbo")


# ---------------------------------------------------------------------- hash chain
def build_log(incident_id: str = "7") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    prev = GENESIS_HASH
    steps: list[tuple[str, str, str | None]] = [
        (REPORT_ACTION, "grid-worker-12", None),
        ("register", "op1", None),
        ("dispatch", "op1", None),
        ("decline", "squad-1", "outside our area"),
        ("dispatch", "op1", None),
        ("accept", "squad-3", None),
        ("start_handling", "squad-3", None),
        ("request_extension", "squad-3", "等待审批"),
        ("approve_extension", "supervisor-2", None),
        ("resume", "squad-3", None),
        ("give_feedback", "squad-3", None),
        ("verify_fail", "supervisor-2", "垃圾仍未清理"),
        ("give_feedback", "squad-3", None),
        ("verify_ok", "supervisor-2", None),
        ("close", "op1", None),
    ]
    case: CaseState | None = None
    for seq, (action, actor, reason) in enumerate(steps, start=1):
        ts = T0 + seq * 61.25 + 0.000001
        if case is None:
            from_state, case = None, CaseState()
        else:
            from_state = case.state
            case = apply(case, action, actor, ts, reason)
        h = entry_hash(prev, incident_id, seq, action, from_state, case.state, actor, ts, reason)
        entries.append(
            {
                "incident_id": incident_id,
                "seq": seq,
                "action": action,
                "from_state": from_state,
                "to_state": case.state,
                "actor": actor,
                "ts": ts,
                "reason": reason,
                "prev_hash": prev,
                "hash": h,
            }
        )
        prev = h
    return entries


def test_chain_verifies_and_replays() -> None:
    log = build_log()
    assert verify_chain(log) is None
    without_ids = [{k: v for k, v in e.items() if k != "incident_id"} for e in log]
    assert verify_chain(without_ids, incident_id=7) is None
    assert verify_chain(without_ids, incident_id="8") == 0
    case = replay(log)
    assert case.state == "closed" and case.rework_count == 1 and case.extension_count == 1
    assert len(case.pauses) == 1
    # A segment verifies from the hash before it.
    assert verify_chain(log[5:], start_hash=log[4]["hash"]) is None
    assert verify_chain([]) is None


def _set(key: str, value: Any) -> Any:
    def change(log: list[dict[str, Any]], k: int) -> None:
        log[k][key] = value

    return change


def _delete(log: list[dict[str, Any]], k: int) -> None:
    del log[k]


def _swap(log: list[dict[str, Any]], k: int) -> None:
    log[k], log[k + 1] = log[k + 1], log[k]


def _rehash(log: list[dict[str, Any]], k: int) -> None:
    # A forger edits the actor and recomputes that entry's hash: the next link breaks.
    e = log[k]
    e["actor"] = "someone-else"
    e["hash"] = entry_hash(
        e["prev_hash"],
        e["incident_id"],
        e["seq"],
        e["action"],
        e["from_state"],
        e["to_state"],
        e["actor"],
        e["ts"],
        e["reason"],
    )


def _drop_key(log: list[dict[str, Any]], k: int) -> None:
    del log[k]["hash"]


@pytest.mark.parametrize(
    ("tamper", "k", "bad"),
    [
        (_set("actor", "op2"), 3, 3),
        (_set("reason", "changed my mind"), 3, 3),
        (_set("reason", ""), 3, 3),  # empty is not NULL
        (_set("reason", "late"), 2, 2),  # NULL -> text
        (_set("ts", T0 + 1), 4, 4),
        (_set("to_state", "closed"), 5, 5),
        (_set("action", "verify_ok"), 11, 11),
        (_set("seq", 99), 6, 6),
        (_set("hash", "f" * 64), 6, 6),
        (_set("prev_hash", GENESIS_HASH), 1, 1),
        (_set("incident_id", "8"), 9, 9),
        (_delete, 2, 2),
        (_delete, 0, 0),
        (_swap, 3, 3),
        (_rehash, 8, 9),
        (_drop_key, 10, 10),
    ],
)
def test_chain_tamper_detection(tamper: Any, k: int, bad: int) -> None:
    log = build_log()
    tamper(log, k)
    assert verify_chain(log) == bad


def test_deleting_the_tail_is_only_detectable_against_the_stored_head() -> None:
    # Documented limit: a chain proves order and content, not completeness at the end;
    # the service keeps the latest hash elsewhere (the incident row / events) for that.
    log = build_log()
    assert verify_chain(log[:-2]) is None


def test_canonical_encoding_matches_the_documented_example() -> None:
    data = canonical_entry(
        GENESIS_HASH, 7, 1, "report", None, "reported", "op1", 1700000000.5, None
    )
    expected = (
        b"19:gridhub-case-log-v1,64:" + b"0" * 64 + b",1:7,1:1,6:report,-8:reported,"
        b"3:op1,16:1700000000500000,-"
    )
    assert data == expected
    assert (
        entry_hash(GENESIS_HASH, "7", 1, "report", None, "reported", "op1", 1700000000.5, None)
        == hashlib.sha256(expected).hexdigest()
    )


def test_chinese_text_is_counted_in_utf8_bytes() -> None:
    data = canonical_entry(GENESIS_HASH, "7", 2, "shelve", "handling", "shelved", "op1", T0, "挂账")
    assert data.endswith("6:挂账,".encode())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (1700000000.123456, 1700000000.1234561),  # below a microsecond: same instant
        (1700000000.0, 1700000000),  # float or int seconds
    ],
)
def test_timestamps_hash_at_microsecond_precision(a: float, b: float) -> None:
    h = [entry_hash(GENESIS_HASH, "1", 1, "report", None, "reported", "x", t, None) for t in (a, b)]
    assert h[0] == h[1]


def test_replay_skips_non_workflow_entries() -> None:
    log = [
        {"action": "report", "actor": "x", "ts": T0},
        {"action": "note", "actor": "x", "ts": T0 + 1, "reason": "called the reporter"},
        {"action": "register", "actor": "op1", "ts": T0 + 2},
    ]
    assert replay(log) == replace(CaseState(), state="registered", updated_at=T0 + 2)
