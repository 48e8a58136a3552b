"""The "double random, one public" draw (双随机一公开抽查), as a pure, re-runnable function.

For one inspection matter, ``draw`` picks the market entities to inspect (the first
random) and, for each, a team of at least two inspectors of the matter's department (the
second random), never an inspector who must recuse himself from that entity (回避). Its
only source of chance is the ``seed``; given the same seed and the same inputs it returns
the same draw, whatever order the inputs come in, on any machine, in any later version of
this code that keeps ``ALGORITHM``. The draw and its seed are stored and published, so
anyone can re-run it and check that nobody picked the targets or the inspectors by hand.

Algorithm ``gridhub-double-random-v1``
--------------------------------------
Written out so it can be re-implemented in any language:

1. **Canonical inputs.** Inspectors: those whose department equals the matter's, by
   id (sorted by Unicode code point, duplicates removed). Entities: sorted by id.
   Conflicts: the set of (inspector id, entity id) pairs. Risk weights: a weight per
   risk class (``None``: every entity weighs 1). An entity weighing 0 is never drawn.
2. **Random numbers.** The k-th number (k = 0, 1, 2, ...) is
   ``u_k = (first 8 bytes of SHA-256(ALGORITHM + "\\n" + seed + "\\n" + str(k)),
   read as a big-endian unsigned integer, shifted right by 11) / 2**53``, a double in
   [0, 1), strings in UTF-8, ``str(k)`` in decimal. Numbers are used in the order the steps
   below ask for them, one per choice.
3. **Targets** (weighted sampling without replacement). ``targets`` times: ``W`` = sum
   of the weights of the entities not yet drawn (summed left to right in id order, IEEE-754
   doubles); ``r = u_k * W``; walk the undrawn entities in id order adding up their
   weights and take the first one whose running sum exceeds ``r`` (if rounding runs past
   the end, the last undrawn entity with a positive weight). The order of drawing is the
   order of the result.
4. **Inspectors.** For each target in drawing order, ``inspectors_per_target`` times:
   the candidates are the department's inspectors with no conflict with this target and
   not yet on its team; keep those with the fewest targets so far in this draw (load
   balancing); take candidate ``min(floor(u_k * n), n - 1)`` of those ``n`` in id order,
   and count one more target for that inspector. Team members are listed in the order
   they were drawn.

How to re-run a draw
--------------------
``GET /api/inspections/draws/{id}`` (or the public list) gives ``seed``, ``algorithm``,
``params`` (every input above, recorded at draw time, so later registry changes do not
matter) and ``result``. Then either ``POST /api/inspections/draws/{id}/verify``, or
offline: save the JSON to a file and run ``python -m dispatch.inspections draw.json``
(prints whether it reproduces), or in Python ``redraw(seed, params).result_json()
== result``, or follow steps 1-4 above in any language.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidInput

ALGORITHM = "gridhub-double-random-v1"

RISK_CLASSES: tuple[str, ...] = ("A", "B", "C", "D")  # A = lowest risk ... D = highest

# An inspection is done by at least two enforcement officers (行政处罚法 art. 42; the
# double-random rules name teams, not single inspectors): fewer is refused, not rounded up.
MIN_INSPECTORS_PER_TARGET = 2
DEFAULT_INSPECTORS_PER_TARGET = 2

# Risk-weighted draws: each class up doubles the chance (D is drawn 8x as often as A), so
# high-risk entities are checked more often while a low-risk one can still be drawn;
# 差异化抽查 without exempting anyone.
DEFAULT_RISK_WEIGHTS: Mapping[str, float] = {"A": 1.0, "B": 2.0, "C": 4.0, "D": 8.0}

# Seeds are text a person may type or read aloud at a public draw; longer is never needed.
MAX_SEED_LEN = 200

_SCALE = 2.0**53


class DrawError(InvalidInput):
    """A draw that cannot be made. ``code`` is one of ``inspection.not_enough_inspectors``,
    ``inspection.not_enough_entities``, ``inspection.bad_weights``,
    ``inspection.bad_input``."""

    code = "inspection.bad_input"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True, slots=True)
class Matter:
    """An inspection matter (抽查事项); only ``department`` matters to the draw."""

    id: str
    department: str


@dataclass(frozen=True, slots=True)
class Inspector:
    id: str
    department: str


@dataclass(frozen=True, slots=True)
class Entity:
    """A market entity; ``risk_class`` is one of ``RISK_CLASSES``."""

    id: str
    risk_class: str


@dataclass(frozen=True, slots=True)
class Pick:
    """One drawn target and its inspection team, in drawing order."""

    entity_id: str
    risk_class: str
    inspector_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Draw:
    """A finished draw: ``picks`` in drawing order, and the canonical inputs it came from."""

    algorithm: str
    seed: str
    matter_id: str
    department: str
    targets: int
    inspectors_per_target: int
    risk_weights: Mapping[str, float] | None
    inspector_ids: tuple[str, ...]
    entities: tuple[Entity, ...]
    conflicts: tuple[tuple[str, str], ...]
    picks: tuple[Pick, ...]

    def params_json(self) -> dict[str, Any]:
        """Every input of the draw as JSON, enough for ``redraw`` to repeat it."""
        return {
            "matter_id": self.matter_id,
            "department": self.department,
            "targets": self.targets,
            "inspectors_per_target": self.inspectors_per_target,
            "risk_weights": None if self.risk_weights is None else dict(self.risk_weights),
            "inspectors": list(self.inspector_ids),
            "entities": [[e.id, e.risk_class] for e in self.entities],
            "conflicts": [list(c) for c in self.conflicts],
        }

    def result_json(self) -> dict[str, Any]:
        """The picks as JSON (what is stored, published and compared on verification)."""
        return {
            "algorithm": self.algorithm,
            "picks": [
                {"entity_id": p.entity_id, "risk_class": p.risk_class,
                 "inspectors": list(p.inspector_ids)}
                for p in self.picks
            ],
        }

    def loads(self) -> dict[str, int]:
        """Targets per inspector of the pool (0 for those not drawn)."""
        out = dict.fromkeys(self.inspector_ids, 0)
        for p in self.picks:
            for i in p.inspector_ids:
                out[i] += 1
        return out


class _Stream:
    """The draw's random numbers: step 2 of the algorithm (SHA-256 in counter mode)."""

    def __init__(self, seed: str) -> None:
        self._prefix = f"{ALGORITHM}\n{seed}\n".encode()
        self._k = 0

    def uniform(self) -> float:
        digest = hashlib.sha256(self._prefix + str(self._k).encode("ascii")).digest()
        self._k += 1
        return (int.from_bytes(digest[:8], "big") >> 11) / _SCALE

    def index(self, n: int) -> int:
        return min(math.floor(self.uniform() * n), n - 1)


def _weights(
    entities: Sequence[Entity], risk_weights: Mapping[str, float] | None
) -> list[float]:
    if risk_weights is None:
        return [1.0] * len(entities)
    out = []
    for e in entities:
        w = risk_weights.get(e.risk_class)
        if w is None:
            raise DrawError("inspection.bad_weights",
                            f"no risk weight for class {e.risk_class!r} (entity {e.id})")
        if not (math.isfinite(w) and w >= 0):
            raise DrawError("inspection.bad_weights",
                            f"risk weight of class {e.risk_class!r} must be finite and >= 0")
        out.append(float(w))
    return out


def _weighted_pick(weights: list[float], taken: list[bool], u: float) -> int:
    total = 0.0
    for w, t in zip(weights, taken, strict=True):
        if not t:
            total += w
    r = u * total
    acc = 0.0
    last = -1
    for k, (w, t) in enumerate(zip(weights, taken, strict=True)):
        if t or w <= 0:
            continue
        acc += w
        last = k
        if acc > r:
            return k
    return last  # only reached through rounding at the very end


def draw(
    seed: str,
    matter: Matter,
    inspectors: Iterable[Inspector],
    entities: Iterable[Entity],
    conflicts: Iterable[tuple[str, str]],
    *,
    targets: int,
    inspectors_per_target: int = DEFAULT_INSPECTORS_PER_TARGET,
    risk_weights: Mapping[str, float] | None = None,
) -> Draw:
    """Draw ``targets`` entities and a team of ``inspectors_per_target`` for each.

    Deterministic in ``seed`` and the inputs, not in their order (see the module
    docstring for the exact algorithm). ``inspectors`` of other departments than the
    matter's are ignored; ``conflicts`` are (inspector id, entity id) pairs that are
    never put together. Raises ``DrawError``: ``inspection.not_enough_inspectors`` when a
    drawn target has fewer unconflicted inspectors than a team needs,
    ``inspection.not_enough_entities`` when fewer entities can be drawn than
    ``targets``, ``inspection.bad_weights`` for a missing, negative or non-finite
    weight, ``inspection.bad_input`` for bad arguments (empty or overlong seed, an
    unknown risk class, one entity id with two risk classes, a team smaller than
    ``MIN_INSPECTORS_PER_TARGET``).
    """
    if not seed or len(seed) > MAX_SEED_LEN:
        raise DrawError("inspection.bad_input", f"the seed must be 1-{MAX_SEED_LEN} characters")
    if targets < 1:
        raise DrawError("inspection.bad_input", "targets must be at least 1")
    if inspectors_per_target < MIN_INSPECTORS_PER_TARGET:
        raise DrawError("inspection.bad_input",
                        f"an inspection team has at least {MIN_INSPECTORS_PER_TARGET} inspectors")
    pool = tuple(sorted({i.id for i in inspectors if i.department == matter.department}))
    by_id: dict[str, Entity] = {}
    for e in entities:
        if e.risk_class not in RISK_CLASSES:
            raise DrawError("inspection.bad_input",
                            f"entity {e.id}: unknown risk class {e.risk_class!r}")
        if by_id.setdefault(e.id, e).risk_class != e.risk_class:
            raise DrawError("inspection.bad_input", f"entity {e.id} has two risk classes")
    ents = tuple(by_id[k] for k in sorted(by_id))
    pool_set, ent_set = set(pool), set(by_id)
    pairs = tuple(sorted({(i, e) for i, e in conflicts if i in pool_set and e in ent_set}))
    weights_map = None if risk_weights is None else {
        k: float(risk_weights[k]) for k in sorted(risk_weights)}
    weights = _weights(ents, weights_map)
    drawable = sum(1 for w in weights if w > 0)
    if drawable < targets:
        raise DrawError("inspection.not_enough_entities",
                        f"matter {matter.id}: {targets} targets asked, {drawable} can be drawn")

    rng = _Stream(seed)
    taken = [False] * len(ents)
    order: list[int] = []
    for _ in range(targets):
        k = _weighted_pick(weights, taken, rng.uniform())
        taken[k] = True
        order.append(k)

    conflicted = set(pairs)
    load = dict.fromkeys(pool, 0)
    picks: list[Pick] = []
    for k in order:
        target = ents[k]
        eligible = [i for i in pool if (i, target.id) not in conflicted]
        if len(eligible) < inspectors_per_target:
            raise DrawError(
                "inspection.not_enough_inspectors",
                f"entity {target.id}: {len(eligible)} unconflicted inspectors of "
                f"{matter.department}, a team needs {inspectors_per_target}")
        team: list[str] = []
        for _ in range(inspectors_per_target):
            free = [i for i in eligible if i not in team]
            least = min(load[i] for i in free)
            tier = [i for i in free if load[i] == least]
            chosen = tier[rng.index(len(tier))]
            team.append(chosen)
            load[chosen] += 1
        picks.append(Pick(target.id, target.risk_class, tuple(team)))

    return Draw(
        algorithm=ALGORITHM, seed=seed, matter_id=matter.id, department=matter.department,
        targets=targets, inspectors_per_target=inspectors_per_target,
        risk_weights=weights_map, inspector_ids=pool, entities=ents, conflicts=pairs,
        picks=tuple(picks))


def redraw(seed: str, params: Mapping[str, Any]) -> Draw:
    """Repeat a draw from its stored ``params`` (``Draw.params_json``).

    Raises ``DrawError`` (``inspection.bad_input``) for params that are not of that shape,
    or whatever ``draw`` raises for them.
    """
    try:
        department = str(params["department"])
        weights = params["risk_weights"]
        return draw(
            seed,
            Matter(str(params["matter_id"]), department),
            [Inspector(str(i), department) for i in params["inspectors"]],
            [Entity(str(e), str(c)) for e, c in params["entities"]],
            [(str(i), str(e)) for i, e in params["conflicts"]],
            targets=int(params["targets"]),
            inspectors_per_target=int(params["inspectors_per_target"]),
            risk_weights=None if weights is None else {
                str(k): float(v) for k, v in dict(weights).items()},
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DrawError("inspection.bad_input", f"malformed draw parameters: {e!r}") from e


@dataclass(frozen=True, slots=True)
class Verification:
    """Whether a stored draw is what its seed and inputs give; ``reason`` when it is not."""

    reproduced: bool
    reason: str | None = None


def verify(seed: str, algorithm: str, params: Mapping[str, Any],
           result: Mapping[str, Any]) -> Verification:
    """Re-run a stored draw and compare the picks with the stored ``result``."""
    if algorithm != ALGORITHM:
        return Verification(False, f"algorithm {algorithm!r} is not {ALGORITHM!r}")
    try:
        again = redraw(seed, params).result_json()
    except DrawError as e:
        return Verification(False, f"{e.code}: {e.message}")
    if _plain(again) != _plain(result):
        return Verification(False, "the stored result differs from the re-run")
    return Verification(True)


def _plain(value: Any) -> Any:
    """JSON-normalised copy (tuples become lists), so stored and fresh values compare."""
    return json.loads(json.dumps(value, ensure_ascii=False, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dispatch.inspections draw.json``: re-run a draw fetched from the API."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m dispatch.inspections DRAW.json  (GET /api/inspections/draws/ID)",
              file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        doc = json.load(f)
    outcome = verify(doc["seed"], doc["algorithm"], doc["params"], doc["result"])
    print(json.dumps({"reproduced": outcome.reproduced, "reason": outcome.reason},
                     ensure_ascii=False))
    return 0 if outcome.reproduced else 1


if __name__ == "__main__":
    raise SystemExit(main())
