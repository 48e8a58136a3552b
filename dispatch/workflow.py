"""The case workflow (九步闭环) as a pure state machine, and the case log's hash chain.

Every case runs report -> register -> dispatch -> accept -> handle -> feedback ->
verify -> close -> evaluate -> archive. ``apply`` takes a ``CaseState`` and an
action and returns the next state or raises ``TransitionError`` with a stable
code; it reads no clock (``now`` is passed in) and writes nothing. The service
appends one case-log entry per applied action, chained by ``entry_hash``, so
that every step is recorded, traceable and attributable (全程留痕、可追溯、可追责).

States and actions (the flags are fields of ``CaseState``, not states):

========================  ===============================  =====================
action                    from                             to
========================  ===============================  =====================
register                  reported                         registered
dispatch                  registered                       dispatched
accept                    dispatched                       accepted   (handler := actor)
decline *                 dispatched                       registered (re-dispatch)
withdraw *                dispatched, accepted             registered (re-dispatch: the
                                                           unit is recalled, e.g. preempted
                                                           by a critical case or overridden)
start_handling            accepted                         handling
give_feedback             handling                         feedback   (feedback_by := actor)
verify_ok  (not handler)  feedback                         verified
verify_fail * (not hdlr)  feedback                         handling   (rework_count + 1)
close                     verified                         closed
evaluate                  closed                           evaluated
archive                   evaluated                        archived
request_extension *       accepted, handling (not paused)  same (extension_requested)
approve_extension         accepted, handling (requested)   same (extension_count + 1, pause;
                                                           not by the requester)
reject_extension *        accepted, handling (requested)   same
resume                    accepted, handling (paused)      same (pause ends)
shelve *                  registered .. handling           shelved (pause)
reopen                    shelved                          registered (pause ends)
cancel *                  reported, registered,            cancelled
                          dispatched, shelved
========================  ===============================  =====================

``*``: a non-empty reason is required. Separation of duties is by identity (the actor
is the authenticated principal, supplied by the route): the verifier is neither the
handler, nor who gave feedback, nor a known member of their unit (``handler_members``);
an extension is approved by someone other than who asked for it. ``replay`` does not
re-check identities: a recorded step happened and cannot be refused afterwards.

Pauses (SLA clock stopped): an approved extension pauses until ``resume``,
``start_handling`` or ``give_feedback``; a shelved case is paused until ``reopen``
(or ``cancel``). Closed pauses are kept in ``CaseState.pauses`` for
``dispatch/sla.py``. Any change of state clears a pending extension request.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.errors import HubError

STATES: tuple[str, ...] = (
    "reported",
    "registered",
    "dispatched",
    "accepted",
    "handling",
    "feedback",
    "verified",
    "closed",
    "evaluated",
    "archived",
    "shelved",
    "cancelled",
)

INITIAL_STATE = "reported"
TERMINAL_STATES: frozenset[str] = frozenset({"archived", "cancelled"})

# The log entry that creates a case (from_state None -> "reported"). Not an action of
# ``apply``: a case is created, not transitioned into existence.
REPORT_ACTION = "report"

ACTIONS: tuple[str, ...] = (
    "register",
    "dispatch",
    "accept",
    "decline",
    "withdraw",
    "start_handling",
    "give_feedback",
    "verify_ok",
    "verify_fail",
    "close",
    "evaluate",
    "archive",
    "request_extension",
    "approve_extension",
    "reject_extension",
    "resume",
    "shelve",
    "reopen",
    "cancel",
)


_WORKING = frozenset({"accepted", "handling"})

# action -> (states it may start from, state it leads to; None = stays).
_MOVES: dict[str, tuple[frozenset[str], str | None]] = {
    "register": (frozenset({"reported"}), "registered"),
    "dispatch": (frozenset({"registered"}), "dispatched"),
    "accept": (frozenset({"dispatched"}), "accepted"),
    "decline": (frozenset({"dispatched"}), "registered"),
    "withdraw": (frozenset({"dispatched", "accepted"}), "registered"),
    "start_handling": (frozenset({"accepted"}), "handling"),
    "give_feedback": (frozenset({"handling"}), "feedback"),
    "verify_ok": (frozenset({"feedback"}), "verified"),
    "verify_fail": (frozenset({"feedback"}), "handling"),
    "close": (frozenset({"verified"}), "closed"),
    "evaluate": (frozenset({"closed"}), "evaluated"),
    "archive": (frozenset({"evaluated"}), "archived"),
    "request_extension": (_WORKING, None),
    "approve_extension": (_WORKING, None),
    "reject_extension": (_WORKING, None),
    "resume": (_WORKING, None),
    "shelve": (frozenset({"registered", "dispatched", "accepted", "handling"}), "shelved"),
    "reopen": (frozenset({"shelved"}), "registered"),
    "cancel": (frozenset({"reported", "registered", "dispatched", "shelved"}), "cancelled"),
}

# Actions that must say why: each undoes or holds up work someone else will look at.
REASON_REQUIRED: frozenset[str] = frozenset(
    {
        "decline",
        "withdraw",
        "verify_fail",
        "request_extension",
        "reject_extension",
        "shelve",
        "cancel",
    }
)

# Actions after which an open pause ends (besides resume/reopen): work visibly goes on.
_ENDS_PAUSE: frozenset[str] = frozenset(
    {"resume", "reopen", "start_handling", "give_feedback", "cancel"}
)


class TransitionError(HubError):
    """An action that may not be applied. ``code`` is one of:

    ``case.unknown_action``, ``case.actor_required``, ``case.illegal_transition``,
    ``case.reason_required``, ``case.verifier_is_handler``, ``case.approver_is_requester``.
    """

    code = "case.illegal_transition"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True, slots=True)
class CaseState:
    """Where a case is in the loop.

    ``handler`` is who accepted it (the unit/actor doing the work) and
    ``feedback_by`` who reported it done; neither may verify it.
    ``extension_requested_by`` asked for the pending extension and may not approve it.
    ``paused_since`` is set while the SLA clock is stopped; ``pauses`` are the closed pauses
    ``(start, end)`` in order. ``updated_at`` is the time of the last action.
    """

    state: str = INITIAL_STATE
    rework_count: int = 0
    extension_count: int = 0
    extension_requested: bool = False
    extension_requested_by: str | None = None
    paused_since: float | None = None
    pauses: tuple[tuple[float, float], ...] = ()
    handler: str | None = None
    feedback_by: str | None = None
    updated_at: float | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown case state {self.state!r}")

    @property
    def flags(self) -> tuple[str, ...]:
        """The flags the console shows next to the state (``flag.*`` in the pages' catalog)."""
        out: list[str] = []
        if self.rework_count:
            out.append("rework")
        if self.extension_count or self.extension_requested:
            out.append("extension")
        if self.paused_since is not None:
            out.append("paused")
        return tuple(out)

    def paused_s(self, now: float) -> float:
        """Seconds the SLA clock has been stopped in total, counting an open pause to ``now``."""
        total = sum(end - start for start, end in self.pauses)
        if self.paused_since is not None:
            total += max(0.0, now - self.paused_since)
        return total

    def all_pauses(self) -> tuple[tuple[float, float | None], ...]:
        """Closed pauses plus the open one (end ``None``), for ``sla.deadlines``."""
        if self.paused_since is None:
            return self.pauses
        return (*self.pauses, (self.paused_since, None))


def _guard(case: CaseState, action: str) -> str | None:
    """Why ``action`` is not possible in ``case`` (``None``: it is), ignoring actor/reason."""
    sources, _ = _MOVES[action]
    if case.state not in sources:
        return f"cannot {action} a case that is {case.state}"
    if action == "request_extension":
        if case.extension_requested:
            return "an extension request is already pending"
        if case.paused_since is not None:
            return "the case is already paused"
    if action in ("approve_extension", "reject_extension") and not case.extension_requested:
        return "no extension request is pending"
    if action == "resume" and case.paused_since is None:
        return "the case is not paused"
    return None


def allowed_actions(case: CaseState) -> tuple[str, ...]:
    """Actions the state allows, in ``ACTIONS`` order (for the console's buttons).

    Checks that depend on who acts or why (reason, verifier) are left to ``apply``.
    """
    return tuple(a for a in ACTIONS if _guard(case, a) is None)


def apply(
    case: CaseState,
    action: str,
    actor: str,
    now: float,
    reason: str | None = None,
    *,
    handler_members: Collection[str] = (),
    check_identity: bool = True,
) -> CaseState:
    """The case after ``actor`` does ``action`` at ``now``; raises ``TransitionError``.

    ``actor`` is the authenticated principal (the caller supplies it; this module takes
    no name from a request). ``handler_members``: other principals known to act for the
    handler or the one who gave feedback (a unit's phones' tokens), where known.

    Checks, in order: the action exists (``case.unknown_action``), an actor is
    named (``case.actor_required``), the state allows it
    (``case.illegal_transition``), a reason is given where required
    (``case.reason_required``); then, unless ``check_identity`` is false (replaying a
    recorded log), the verifier is neither the handler, nor the one who gave feedback,
    nor one of ``handler_members`` (``case.verifier_is_handler``), and the approver of
    an extension is not who requested it (``case.approver_is_requester``).
    """
    if action not in _MOVES:
        raise TransitionError("case.unknown_action", f"unknown action {action!r}")
    if not actor or not actor.strip():
        raise TransitionError("case.actor_required", f"{action}: every step needs an actor")
    why_not = _guard(case, action)
    if why_not is not None:
        raise TransitionError("case.illegal_transition", why_not)
    if action in REASON_REQUIRED and (reason is None or not reason.strip()):
        raise TransitionError("case.reason_required", f"{action} needs a reason")
    if check_identity:
        _separate_duties(case, action, actor, handler_members)

    _, target = _MOVES[action]
    to_state = target if target is not None else case.state
    changes: dict[str, Any] = {"state": to_state, "updated_at": now}
    if to_state != case.state:
        changes["extension_requested"] = False

    paused_since = case.paused_since
    if paused_since is not None and action in _ENDS_PAUSE:
        changes["pauses"] = (*case.pauses, (paused_since, max(paused_since, now)))
        changes["paused_since"] = None
    elif paused_since is None and action in ("approve_extension", "shelve"):
        changes["paused_since"] = now

    if action == "accept":
        changes["handler"] = actor
    elif action == "give_feedback":
        changes["feedback_by"] = actor
        if case.handler is None:
            changes["handler"] = actor
    elif action == "verify_fail":
        changes["rework_count"] = case.rework_count + 1
    elif action == "request_extension":
        changes["extension_requested"] = True
        changes["extension_requested_by"] = actor
    elif action == "approve_extension":
        changes["extension_requested"] = False
        changes["extension_count"] = case.extension_count + 1
    elif action == "reject_extension":
        changes["extension_requested"] = False
    elif action in ("reopen", "withdraw"):
        # Back to the queue for a fresh dispatch: whoever had it before is not assumed.
        changes["handler"] = None
        changes["feedback_by"] = None
    if not changes.get("extension_requested", case.extension_requested):
        changes["extension_requested_by"] = None
    return replace(case, **changes)


def _separate_duties(
    case: CaseState, action: str, actor: str, handler_members: Collection[str]
) -> None:
    """Refuse a step whose actor must be someone else (see ``apply``)."""
    if action in ("verify_ok", "verify_fail"):
        doers = {case.handler, case.feedback_by} - {None}
        if actor in doers or (doers and actor in handler_members):
            raise TransitionError(
                "case.verifier_is_handler", f"{actor} handled this case and may not verify it"
            )
    if action == "approve_extension" and actor == case.extension_requested_by:
        raise TransitionError(
            "case.approver_is_requester",
            f"{actor} asked for this extension; another supervisor must approve it",
        )


def replay(entries: Iterable[Mapping[str, Any]], initial: CaseState | None = None) -> CaseState:
    """Rebuild a case's state from its log (``action``, ``actor``, ``ts``, ``reason``).

    Entries whose action is not a workflow action (the creating ``report`` entry,
    notes the service may log) are skipped; an illegal step raises
    ``TransitionError`` as ``apply`` does. Identities are not re-checked (see ``apply``).
    """
    case = initial if initial is not None else CaseState()
    for e in entries:
        if e["action"] in _MOVES:
            case = apply(case, e["action"], e["actor"], float(e["ts"]), e.get("reason"),
                         check_identity=False)
    return case


# ---------------------------------------------------------------------- hash chain
GENESIS_HASH = "0" * 64
CHAIN_FORMAT = "gridhub-case-log-v1"


def _field(value: str | None) -> bytes:
    if value is None:
        return b"-"
    raw = value.encode("utf-8")
    return str(len(raw)).encode("ascii") + b":" + raw + b","


def ts_micros(ts: float) -> int:
    """A timestamp as whole microseconds, the precision PostgreSQL ``timestamptz`` keeps."""
    return round(ts * 1_000_000)


def canonical_entry(
    prev_hash: str,
    incident_id: str | int,
    seq: int,
    action: str,
    from_state: str | None,
    to_state: str,
    actor: str,
    ts: float,
    reason: str | None,
) -> bytes:
    """The exact bytes ``entry_hash`` hashes; see ``entry_hash`` for the format."""
    fields: Sequence[str | None] = (
        CHAIN_FORMAT,
        prev_hash,
        str(incident_id),
        str(int(seq)),
        action,
        from_state,
        to_state,
        actor,
        str(ts_micros(ts)),
        reason,
    )
    return b"".join(_field(f) for f in fields)


def entry_hash(
    prev_hash: str,
    incident_id: str | int,
    seq: int,
    action: str,
    from_state: str | None,
    to_state: str,
    actor: str,
    ts: float,
    reason: str | None,
) -> str:
    """SHA-256 (lowercase hex) of one case-log entry, chained to the previous entry.

    Canonical encoding, so that an auditor can recompute it in any language:
    the ten fields below, in this order, each written as a netstring
    ``<byte length in decimal>:<UTF-8 bytes>,`` or, for a NULL, the single byte
    ``-``; the netstrings are concatenated with nothing in between and hashed.

    1. the literal ``gridhub-case-log-v1`` (format version)
    2. ``prev_hash``: the previous entry's hash; ``GENESIS_HASH`` (64 zeros) for seq 1
    3. ``incident_id`` as decimal text
    4. ``seq`` as decimal text (1, 2, ... per incident)
    5. ``action``          6. ``from_state`` (NULL for the creating entry)
    7. ``to_state``        8. ``actor``
    9. ``ts`` as whole microseconds since the UNIX epoch, decimal text
       (``round(ts * 1e6)``; timestamps carry at most microseconds)
    10. ``reason`` (NULL when none; an empty string is not NULL)

    Example: seq 1 of incident 7 created by ``op1`` at 1700000000.5 hashes
    ``19:gridhub-case-log-v1,64:000…0,1:7,1:1,6:report,-8:reported,3:op1,16:1700000000500000,-``.
    """
    data = canonical_entry(
        prev_hash, incident_id, seq, action, from_state, to_state, actor, ts, reason
    )
    return hashlib.sha256(data).hexdigest()


_ENTRY_KEYS = ("seq", "action", "from_state", "to_state", "actor", "ts", "prev_hash", "hash")


def verify_chain(
    entries: Sequence[Mapping[str, Any]],
    incident_id: str | int | None = None,
    start_hash: str = GENESIS_HASH,
) -> int | None:
    """Index of the first entry that breaks the chain, or ``None`` if all is intact.

    ``entries`` are one incident's log in ``seq`` order (mappings with the keys
    ``seq, action, from_state, to_state, actor, ts, reason, prev_hash, hash`` and
    ``incident_id`` unless it is passed as an argument). An entry is bad when a
    key is missing, its ``prev_hash`` is not the previous entry's ``hash`` (or
    ``start_hash`` for the first), its ``seq`` is not one more than the previous
    one (1 for the first when starting at genesis), its ``from_state`` (when not
    NULL) is not the previous entry's ``to_state``, or its ``hash`` differs from
    ``entry_hash`` recomputed over its fields. A chain segment can be checked
    by passing the hash that precedes it as ``start_hash``.
    """
    expected_prev = start_hash
    prev_seq: int | None = 0 if start_hash == GENESIS_HASH else None
    prev_to: str | None = None
    for k, e in enumerate(entries):
        try:
            if any(key not in e for key in _ENTRY_KEYS):
                return k
            inc = e["incident_id"] if incident_id is None else incident_id
            seq = int(e["seq"])
            ts = float(e["ts"])
            if math.isnan(ts):
                return k
            ok = (
                e["prev_hash"] == expected_prev
                and (prev_seq is None or seq == prev_seq + 1)
                and (e["from_state"] is None or prev_to is None or e["from_state"] == prev_to)
                and e["hash"]
                == entry_hash(
                    e["prev_hash"],
                    inc,
                    seq,
                    e["action"],
                    e["from_state"],
                    e["to_state"],
                    e["actor"],
                    ts,
                    e.get("reason"),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return k
        if not ok:
            return k
        expected_prev = e["hash"]
        prev_seq = seq
        prev_to = e["to_state"]
    return None
