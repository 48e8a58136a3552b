"""Why the dispatcher did what it did, as values: a code plus parameters.

The engine and the decision core (``dispatch/planner.py``) explain every candidate,
assignment, withdrawal and alert with ``Reason`` values, never with prose. The pages
render them in the reader's language from the code (``reason.<code>`` in the frontend
translations, ``hub/i18n.render_reason`` on the server); ``Reason.text()`` is the English
rendering kept in text columns (the case log, ``assignments.reason``) and in logs, so that
a record read without the UI still says something.

Parameters are plain JSON scalars (str, int, float). Times are whole seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Param = str | int | float

# English rendering of every code (the message ids of the translations are these texts).
# The candidate texts are the ones the engine always wrote, so older records read alike.
ENGLISH: dict[str, str] = {
    # ---- one candidate
    "cand.eta_road": "eta {eta_s}s by road",
    "cand.eta_line": "eta {eta_s}s straight-line estimate",
    "cand.position_unknown": "position unknown",
    "cand.position_stale": "stale position (last fix {age_s}s ago)",
    "cand.preempts": "preempts {incident} (p{priority})",
    "cand.last_free": "last free {qualifications} unit in {grid}",
    "cand.cases_today": "cases today {n}",
    # ---- one assignment (the headline of a recommendation)
    "assign.best": "best score",
    "assign.best_preempting": "best score, preempting {incident}",
    "assign.no_position": "no qualified unit with a known position; confirm by radio",
    "assign.joint": "joint plan: eta {eta_s}s",
    "assign.joint_no_position": "position unknown or stale; confirm by radio",
    "assign.joint_preempting": "joint plan: eta {eta_s}s, preempting {incident} (p{priority})",
    "assign.override": "operator override ({code})",
    "assign.redirect": "operator redirect ({code})",
    # ---- an incident left waiting
    "wait.no_unit": "no on-duty unit qualified for {qualification}",
    "wait.no_free_unit": "no qualified unit free for {qualification}",
    "wait.taken": "qualified units all taken by more urgent incidents",
    # ---- a unit taken off a case
    "withdraw.preempted": "preempted by p{priority} #{by}",
    "withdraw.replanned": "re-planned: {unit} goes to #{to} (saves {gain_s}s weighted)",
    "withdraw.escalated": "{unit} did not accept within {waited_s}s",
    "withdraw.declined": "{unit} declined",
    "withdraw.override": "operator override ({code})",
    "withdraw.redirected": "operator redirected {unit} ({code})",
    # ---- supervisor alerts
    "alert.escalated": "{unit} did not accept case #{incident} in time; sent to the next candidate",
    "alert.preempted": "{unit} taken off case #{from_incident} for p{priority} case #{to}; "
    "#{from_incident} is planned again",
}


@dataclass(frozen=True, slots=True)
class Reason:
    """A reason code (a key of ``ENGLISH``) and its parameters, sorted by name."""

    code: str
    params: tuple[tuple[str, Param], ...] = ()

    def __post_init__(self) -> None:
        if self.code not in ENGLISH:
            raise ValueError(f"unknown reason code {self.code!r}")

    def get(self, name: str) -> Param | None:
        return next((v for k, v in self.params if k == name), None)

    def text(self) -> str:
        """The English rendering (for text columns and logs; pages translate the code)."""
        return ENGLISH[self.code].format(**dict(self.params))

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "params": dict(self.params)}


def reason(key: str, /, **params: Param) -> Reason:
    """``Reason(key, params)`` with whole seconds for every ``*_s`` parameter."""
    clean = {k: (round(float(v)) if k.endswith("_s") else v) for k, v in params.items()}
    return Reason(key, tuple(sorted(clean.items())))


def texts(reasons: tuple[Reason, ...]) -> tuple[str, ...]:
    return tuple(r.text() for r in reasons)
